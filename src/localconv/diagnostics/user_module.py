"""``localconv doctor --module FILE.py:FACTORY`` (or ``package.module:FACTORY``): the user's own model.

The file is **executed as Python code** (imported), as ``torch.load`` without ``weights_only`` would
run code from a checkpoint: give it only files you trust. ``FACTORY(num_classes)`` returns an
``nn.Module`` or a pair ``(model, optimizer)``. Every failure (no such file, an import error, a
factory that raises or returns something else) is one :class:`~localconv.errors.LocalconvError` line
naming the file (or module) and the error.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import LocalconvError


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def split_spec(spec: str) -> tuple[str, str]:
    """``"path/model.py:make"`` -> ``("path/model.py", "make")``; the factory name is required."""
    where, sep, factory = spec.rpartition(":")
    if not sep or not where or not factory.isidentifier():
        raise LocalconvError(f"--module {spec!r}: expected FILE.py:FACTORY or package.module:FACTORY")
    return where, factory


def import_user_module(where: str) -> ModuleType:
    """Import a ``.py`` file (by path) or a dotted module name; any failure is one line naming it."""
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if path.is_dir():
            raise LocalconvError(f"{path}: is a folder; give FILE.py:FACTORY, or package.module:FACTORY with the "
                                 "package's parent folder on PYTHONPATH")
        if not path.is_file():
            raise LocalconvError(f"{path}: no such file")
        name = f"localconv_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise LocalconvError(f"{path}: cannot be imported as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 (any error of the user's code is reported, not raised)
            sys.modules.pop(name, None)
            raise LocalconvError(f"{path}: failed to import: {_one_line(exc)}") from exc
        return module
    try:
        return importlib.import_module(where)
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        raise LocalconvError(f"{where}: failed to import: {_one_line(exc)}") from exc


def load_factory(spec: str) -> Callable[[int], Any]:
    """The factory ``spec`` names, its module imported (before any data is read: errors come first)."""
    where, factory_name = split_spec(spec)
    module = import_user_module(where)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise LocalconvError(f"{where}: has no function {factory_name!r}")
    return factory


def build_user_model(spec: str, num_classes: int, factory: Callable[[int], Any] | None = None) -> tuple[Any, Any]:
    """``(model, optimizer or None)`` from ``FACTORY(num_classes)`` of the module ``spec`` names."""
    from torch import nn
    from torch.optim import Optimizer

    where, factory_name = split_spec(spec)
    factory = factory or load_factory(spec)
    try:
        made = factory(num_classes)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (sys.exit() in it must not pass for an exit code)
        raise LocalconvError(f"{where}: {factory_name}({num_classes}) raised {_one_line(exc)}") from exc
    model, optimizer = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, nn.Module) or (optimizer is not None and not isinstance(optimizer, Optimizer)):
        raise LocalconvError(f"{where}: {factory_name}({num_classes}) returned {type(made).__name__}; expected an "
                             "nn.Module or a pair (nn.Module, torch.optim.Optimizer)")
    return model, optimizer
