"""Model registry in the style of timm: ``create_model(name, **kw)``.

Built-in models register themselves with :func:`register_model`; the cfg-defined
cuda-convnet models register one factory per shipped config file.
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import ModelError
from .base import Classifier

_REGISTRY: dict[str, tuple[Callable[..., Classifier], str]] = {}


def register_model(name: str, description: str = "") -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator: register ``fn(**kw) -> Classifier`` under ``name``."""

    def wrap(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc_line = (fn.__doc__ or "").strip().splitlines()[:1]
        _REGISTRY[name] = (fn, description or (doc_line[0] if doc_line else ""))
        return fn

    return wrap


def _ensure_builtins() -> None:
    # Importing the model modules runs their @register_model decorators.
    from . import tf_tutorial  # noqa: F401
    from . import cfg_models  # noqa: F401


def list_models() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def model_description(name: str) -> str:
    _ensure_builtins()
    return _REGISTRY[name][1]


def create_model(name: str, **kwargs: Any) -> Classifier:
    """Build a registered model by name; unknown names raise :class:`ModelError`."""
    _ensure_builtins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelError(f"unknown model {name!r}; known models: {known}")
    try:
        model = _REGISTRY[name][0](**kwargs)
    except TypeError as exc:  # an unknown keyword option
        raise ModelError(f"model {name!r}: {exc}") from None
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model
