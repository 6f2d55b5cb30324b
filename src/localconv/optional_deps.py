"""Optional dependencies, checked before a command creates anything.

``localconv compare`` (matplotlib), ``eval --confusion x.png`` (matplotlib) and ``train --tensorboard``
(tensorboard) need packages that a minimal install lacks. Each command calls :func:`require` while it
still validates its options, so a missing package ends it with one line and exit 2, and no report
folder, run folder or half-written file is left behind.
"""
from __future__ import annotations

import importlib

from .errors import LocalconvError


class MissingDependency(LocalconvError):
    """An optional package that the requested feature needs is not installed."""


def require(module: str, feature: str, package: str | None = None) -> None:
    """Import ``module`` (really: a broken install fails here too) or raise a one-line error naming ``feature``."""
    try:
        importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError included; also a None entry in sys.modules
        name = package or module.split(".")[0]
        raise MissingDependency(f"{feature} needs the {name} package, which cannot be imported ({exc}); "
                                f"install it with `pip install {name}`") from None
