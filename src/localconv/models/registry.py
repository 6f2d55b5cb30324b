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


def model_spec(model: Classifier) -> dict[str, Any]:
    """What a run folder stores to rebuild ``model``: a registered name + options, or a cfg spec."""
    if getattr(model, "model_name", None):
        return {"name": model.model_name, "kwargs": dict(getattr(model, "model_kwargs", {}))}
    if getattr(model, "cfg_spec", None):
        return {"name": None, "cfg": model.cfg_spec}
    raise ModelError("model has neither a registered name nor a cfg spec; it cannot be saved in a run")


def build_model_from_spec(spec: dict[str, Any]) -> Classifier:
    """Inverse of :func:`model_spec`."""
    if spec.get("name"):
        return create_model(spec["name"], **spec.get("kwargs", {}))
    if spec.get("cfg"):
        from ..configs import build_cfg_model_from_spec

        return build_cfg_model_from_spec(spec["cfg"])
    raise ModelError(f"cannot rebuild a model from {spec!r}")
