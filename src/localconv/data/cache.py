"""The decoded-image cache and atomic file writes.

Decoding 60,000 JPEGs takes a while, so the decoded uint8 arrays are kept in an uncompressed
``.npz`` file (loaded with ``allow_pickle=False``) keyed on the source's resolved path and the
size + mtime of every file it was read from. Files are written to a temporary name in the same
folder and renamed into place, so a run killed mid-write never leaves a corrupt cache file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from ..errors import DataError
from .cifar_data import CifarData

T = TypeVar("T")

CACHE_ENV = "LOCALCONV_CACHE"
# Bump when decoding changes so that caches written by older code are not reused.
CACHE_FORMAT_VERSION = 2  # 2: 16-bit/alpha/EXIF rules, folder listing and read options in the key
_TEMP_PREFIX = ".tmp-"
_STALE_TEMP_SECONDS = 24 * 3600


def default_cache_dir() -> Path:
    """``$LOCALCONV_CACHE`` if set, else ``~/.cache/localconv``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "localconv"


def fingerprint(kind: str, root: Path, files: Iterable[Path], listing: Iterable[str] = ()) -> str:
    """A short hex key for ``root`` read as ``kind``: its resolved path, each file's name, size and mtime,
    and ``listing`` (folder names that hold no file, read options): any change gives another key."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}\0{kind}\0{root.resolve()}\0".encode())
    for entry in listing:
        digest.update(f"listing\0{entry}\0".encode())
    for file in files:
        try:
            stat = file.stat()
        except OSError as exc:
            raise DataError(f"{file}: cannot read ({exc.strerror or exc})") from None
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:24]


def decoded_cache_path(cache_dir: Path, kind: str, key: str) -> Path:
    return cache_dir / "decoded" / f"{kind}-{key}.npz"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` via a temporary file in the same folder, renamed into place on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def _remove_stale_temps(folder: Path) -> None:
    """Delete temporary files left by runs killed more than a day ago (they are never read)."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    for leftover in folder.glob(f"{_TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()


def read_npz(path: Path, build: Callable[[Any], T], what: str) -> T | None:
    """``build(arrays)`` of the npz cache file at ``path``; None when it is absent or unreadable, or when
    ``build`` raises a DataError (its own validation): the caller then decodes again."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return build(arrays)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError) as exc:
        warnings.warn(f"ignoring unreadable {what} cache {path} ({exc}); decoding again", stacklevel=3)
        return None


def write_npz(path: Path, what: str, **arrays: np.ndarray) -> None:
    """Store ``arrays`` at ``path`` atomically; a cache that cannot be written only warns."""
    try:
        with atomic_file(path) as handle:
            np.savez(handle, **arrays)
    except OSError as exc:
        warnings.warn(f"cannot write the {what} cache {path} ({exc.strerror or exc}); "
                      f"the next run will decode again", stacklevel=3)


def load_decoded(path: Path, source: str) -> CifarData | None:
    """The cached dataset at ``path``, or None when absent or unreadable (then it is rebuilt)."""

    def build(arrays: Any) -> CifarData:
        data = CifarData(train_images=arrays["train_images"], train_labels=arrays["train_labels"],
                         test_images=arrays["test_images"], test_labels=arrays["test_labels"],
                         classes=[str(name) for name in arrays["classes"]], source=source)
        data.validate()
        return data

    return read_npz(path, build, "decoded-data")


def save_decoded(path: Path, data: CifarData) -> None:
    """Store ``data`` at ``path`` atomically; a cache that cannot be written only warns."""
    write_npz(path, "decoded-data", train_images=data.train_images, train_labels=data.train_labels,
              test_images=data.test_images, test_labels=data.test_labels,
              classes=np.array(data.classes, dtype=str))
