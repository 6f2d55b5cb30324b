"""A restricted unpickler for the official CIFAR "python" batches.

The official batches are Python-2 pickles of plain dicts holding a numpy uint8 array and
lists of ints / byte strings. Plain ``pickle.load`` would run whatever callable a crafted
file names (``os.system`` ...), so this unpickler admits only the handful of globals such a
file needs to rebuild numpy arrays, and refuses everything else before it is called.
"""
from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from ..errors import DataError

try:  # numpy >= 2 moved the implementation; old pickles still name numpy.core.
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside the allowed set."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle ``bytes`` at protocol 2, limited to latin-1."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedGlobal(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# (module, name) -> the object handed to the unpickler. Resolved here, never imported by name.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "set"): set,  # Python-2 spelling
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "bytearray"): bytearray,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"global '{module}.{name}' is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("persistent ids are not allowed")


def safe_load(file: BinaryIO | bytes, name: str) -> Any:
    """Unpickle plain containers, strings, bytes and numpy arrays from ``file``.

    Python-2 ``str`` objects are decoded as latin-1 (the encoding numpy needs for its array
    payloads). Any failure, including a refused global, raises :class:`DataError` naming ``name``.
    """
    stream = io.BytesIO(file) if isinstance(file, (bytes, bytearray)) else file
    try:
        obj = RestrictedUnpickler(stream, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise DataError(f"{name}: not a plain CIFAR batch pickle ({exc}); refusing to load it") from None
    except EOFError:
        raise DataError(f"{name}: truncated pickle (file ends early)") from None
    except pickle.UnpicklingError as exc:
        raise DataError(f"{name}: truncated or corrupt pickle ({exc})") from None
    except (ValueError, TypeError, AttributeError, LookupError, MemoryError, OverflowError, UnicodeError,
            RecursionError) as exc:  # LookupError: also KeyError, IndexError, an unknown codec name
        raise DataError(f"{name}: corrupt pickle ({type(exc).__name__}: {exc})") from None
    return obj
