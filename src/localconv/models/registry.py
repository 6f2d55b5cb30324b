"""Model registry in the style of timm: ``create_model(name, **kw)``.

Built-in models register themselves with :func:`register_model`; the cfg-defined
cuda-convnet models register one factory per shipped config file.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from ..errors import ModelError
from .base import Classifier, ModelValueError, check_num_classes

_REGISTRY: dict[str, tuple[Callable[..., Classifier], str]] = {}


def register_model(name: str, description: str = "") -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator: register ``fn(**kw) -> Classifier`` under ``name``."""

    def wrap(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if canonical_name(name) != name:  # lookups fold '_' and case into this form
            raise ValueError(f"model name {name!r} must be lower case with '-', e.g. {canonical_name(name)!r}")
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


def canonical_name(name: str) -> str:
    """``tf_tutorial`` and ``TF-Tutorial`` name ``tf-tutorial``: registered names use '-' and lower case."""
    return name.strip().lower().replace("_", "-")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters them as a shell pattern (``"cc-*"``,
    ``"tf_*"``: '_' and '-' are the same here)."""
    _ensure_builtins()
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    if not isinstance(pattern, str):
        raise ModelValueError(f"pattern must be a string like 'cc-*', got {pattern!r}")
    return [n for n in names if fnmatch.fnmatchcase(n, canonical_name(pattern))]


def model_description(name: str) -> str:
    _ensure_builtins()
    return _REGISTRY[canonical_name(name)][1]


def create_model(name: str, pretrained: bool = False, checkpoint_path: Any = None, **kwargs: Any) -> Classifier:
    """Build a registered model by name (``tf-tutorial`` or ``tf_tutorial``), timm style, untrained.

    ``pretrained`` and ``checkpoint_path`` are timm's keywords: trained weights are loaded by
    ``localconv.create_model`` (:func:`localconv.training.init_from.create_model`), which sits above the
    checkpoint code; here only ``pretrained=False`` is accepted.

    Every built-in model takes ``num_classes`` (a whole number >= 2; default 10) and ``in_chans``
    (any for the tf-tutorial family; 3 only for the cc-* networks, whose layer files fix the input
    channels). Unknown names raise :class:`ModelError`; bad option values raise
    :class:`~localconv.models.base.ModelValueError` (a ``ValueError`` too).
    """
    if pretrained is not False or checkpoint_path is not None:
        raise ModelError("localconv.models.create_model builds untrained models and localconv hosts no pretrained "
                         "weights; load trained ones with localconv.create_model(name, checkpoint_path=RUN folder "
                         "or .safetensors file)")
    _ensure_builtins()
    if not isinstance(name, str):
        raise ModelValueError(f"model name must be a string, got {name!r}")
    key = canonical_name(name)
    if key not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelError(f"unknown model {name!r}; known models: {known}")
    if "num_classes" in kwargs:  # a plain int from here on: the kwargs go into run.json
        kwargs["num_classes"] = check_num_classes(kwargs["num_classes"])
    try:
        model = _REGISTRY[key][0](**kwargs)
    except TypeError as exc:  # an unknown keyword option
        raise ModelError(f"model {key!r}: {exc}") from None
    model.model_name = key
    # Defaults are not stored: a 10-class model's spec stays what it always was.
    model.model_kwargs = {k: v for k, v in kwargs.items()
                          if not (k == "num_classes" and v == 10) and not (k == "in_chans" and v == 3)}
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
