"""The decoded-image cache and atomic file writes.

Decoding 60,000 JPEGs takes a while, so the decoded uint8 arrays are kept in an uncompressed
``.npz`` file (loaded with ``allow_pickle=False``). Its key (:func:`fingerprint`) is the content of a source made
of a few large files (archives, release batches: hashed, 0.02 s for the JPEG tarballs), or, for an
image-folder tree of many small files, each file's path, size, mtime, inode number and inode change time (the
kernel sets the last on every write, rename or replacement, and no tool can set it back). The entry stores its
full key and is used only when that matches (a cache file copied over another name is not trusted). Files are
written to a temporary name in the same folder and renamed into place, so a run killed mid-write never leaves a
corrupt cache file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
import tokenize
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from ..errors import DataError
from .cifar_data import CifarData
from .files import open_regular

T = TypeVar("T")

CACHE_ENV = "LOCALCONV_CACHE"
# Bump when decoding changes so that caches written by older code are not reused.
# 2: 16-bit/alpha/EXIF rules, folder listing and read options in the key; 3: content-keyed archives and
# release files, inode and ctime of tree files, the key stored in the entry
CACHE_FORMAT_VERSION = 3
# Named for localconv: stale ones are deleted, and a --cache-dir may be a folder of the user's own files
# (a download is written straight into it), where a plain ".tmp-*" could be theirs.
_TEMP_PREFIX = ".localconv-tmp-"
_STALE_TEMP_SECONDS = 24 * 3600


def default_cache_dir() -> Path:
    """``$LOCALCONV_CACHE`` if set, else ``~/.cache/localconv``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "localconv"


def fingerprint(kind: str, root: Path, files: Iterable[Path], listing: Iterable[str] = (),
                by_content: bool = False) -> str:
    """The hex key of ``root`` read as ``kind``; any change of the data gives another key.

    ``by_content`` (a few large files: archives, release batches): each file's name and the SHA-256 of its
    bytes, so a moved copy of the same files has the same key. Otherwise (an image-folder tree of many small
    files, where reading every file would cost a second per run): the resolved root, each file's path, size,
    mtime, inode number and inode change time. ``listing``: folder names that hold no file, read options.
    """
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}\0{kind}\0".encode())
    if not by_content:
        digest.update(os.fsencode(root.resolve()) + b"\0")
    for entry in listing:
        digest.update(b"listing\0" + os.fsencode(entry) + b"\0")  # fsencode: any name the file system holds
    for file in files:
        try:
            info = file.stat()
        except OSError as exc:
            raise DataError(f"{file}: cannot read ({exc.strerror or exc})") from None
        if by_content and stat.S_ISREG(info.st_mode):  # a FIFO is refused by the reader, never opened here
            digest.update(os.fsencode(file.name) + b"\0" + file_sha256(file) + b"\0")
        else:
            digest.update(os.fsencode(file) + f"\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}\0"
                                             f"{info.st_ino}\0{info.st_mode}\0".encode())
    return digest.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> bytes:
    """The SHA-256 of a regular file's bytes (about 1.3 GB/s on a CPU with SHA instructions)."""
    fd, _ = open_regular(path)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        try:
            while block := handle.read(chunk):
                digest.update(block)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.digest()


def decoded_cache_path(cache_dir: Path, kind: str, key: str) -> Path:
    return cache_dir / "decoded" / f"{kind}-{key[:24]}.npz"


def check_entry_key(arrays: Any, key: str, path: Path) -> None:
    """Refuse (as unreadable: the caller decodes again) a cache entry written for another key."""
    stored = str(arrays["cache_key"]) if "cache_key" in arrays else "none"
    if stored != key:
        raise DataError(f"{path}: entry written for other data (key {stored[:24]}, expected {key[:24]})")


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
    # Damaged bytes reach zipfile and numpy's header parser, which raise more than these for them
    # (NotImplementedError for a flipped compression method or version, tokenize.TokenError for a damaged
    # header, MemoryError for a damaged shape): a cache entry is never needed, so any of them means decode again.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError, NotImplementedError,
            RuntimeError, SyntaxError, MemoryError, tokenize.TokenError) as exc:
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


def load_decoded(path: Path, source: str, key: str) -> CifarData | None:
    """The cached dataset at ``path`` if it was written under ``key``, or None when absent, unreadable or
    written for other data (then it is rebuilt)."""

    def build(arrays: Any) -> CifarData:
        check_entry_key(arrays, key, path)
        data = CifarData(train_images=arrays["train_images"], train_labels=arrays["train_labels"],
                         test_images=arrays["test_images"], test_labels=arrays["test_labels"],
                         classes=[str(name) for name in arrays["classes"]], source=source)
        data.validate()
        return data

    return read_npz(path, build, "decoded-data")


def save_decoded(path: Path, data: CifarData, key: str) -> None:
    """Store ``data`` read under ``key`` at ``path`` atomically; a cache that cannot be written only warns."""
    write_npz(path, "decoded-data", train_images=data.train_images, train_labels=data.train_labels,
              test_images=data.test_images, test_labels=data.test_labels,
              classes=np.array(data.classes, dtype=str), cache_key=np.array(key))
