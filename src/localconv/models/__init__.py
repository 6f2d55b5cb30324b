"""Model definitions and the registry (``create_model``)."""
from .base import Classifier, GroupSpec, InputSpec
from .registry import create_model, list_models, register_model

__all__ = ["Classifier", "GroupSpec", "InputSpec", "create_model", "list_models", "register_model"]
