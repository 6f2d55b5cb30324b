"""localconv: classic CIFAR-10 convnets with locally connected layers, trained faithfully and fast.

The public names below are imported on first use (PEP 562 ``__getattr__``), not when the package is
imported: ``localconv --help`` and every usage error must answer without paying for ``import torch``
(about a second). ``import localconv`` itself therefore loads nothing heavy.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import LocalconvError

__version__ = "0.1.0"

# public name -> submodule that defines it (add new exports here and to __all__)
_LAZY: dict[str, str] = {
    "create_model": "localconv.training.init_from",  # the registry's, plus checkpoint_path= (trained weights)
    "list_models": "localconv.models",
    "transforms": "localconv.models",
    "LocallyConnected1d": "localconv.nn",
    "LocallyConnected2d": "localconv.nn",
    "LocallyConnected3d": "localconv.nn",
    "LazyLocallyConnected1d": "localconv.nn",
    "LazyLocallyConnected2d": "localconv.nn",
    "LazyLocallyConnected3d": "localconv.nn",
    "diagnose": "localconv.diagnostics.diagnose",
    "Watch": "localconv.diagnostics.watch",
    "resize_images": "localconv.data.resize",
}

if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from .diagnostics.diagnose import diagnose
    from .data.resize import resize_images
    from .diagnostics.watch import Watch
    from .models import list_models, transforms
    from .training.init_from import create_model
    from .nn import (LazyLocallyConnected1d, LazyLocallyConnected2d, LazyLocallyConnected3d, LocallyConnected1d,
                     LocallyConnected2d, LocallyConnected3d)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'localconv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_run(path, which: str = "ema", device: str = "cpu"):  # noqa: ANN001, ANN201 (documented in training.checkpoint)
    """Load a trained run folder: returns ``(model, metadata)``; ``which`` = 'ema', 'raw' or 'best' weights
    (anything else is a ValueError). ``model.classes`` holds the run's class names."""
    from .training.checkpoint import load_run as _load_run

    return _load_run(path, which=which, device=device)


__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnected3d", "LazyLocallyConnected1d",
           "LazyLocallyConnected2d", "LazyLocallyConnected3d", "LocalconvError", "create_model", "list_models",
           "load_run", "resize_images", "transforms", "Watch", "diagnose", "__version__"]
