"""Model definitions and the registry (``create_model``, ``list_models``), timm style."""
from .base import Classifier, GroupSpec, InputSpec, ModelValueError, transforms
from .registry import create_model, list_models, register_model

__all__ = ["Classifier", "GroupSpec", "InputSpec", "ModelValueError", "create_model", "list_models", "register_model",
           "transforms"]
