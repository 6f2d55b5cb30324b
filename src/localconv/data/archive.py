"""Streaming tar archives in memory: members are read, never extracted to disk.

A member with an absolute path or ``..`` makes the whole archive refused, although nothing
is ever written by member name: such a member has no place in a dataset.
"""
from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from ..errors import DataError

# TypeError: tarfile's stream reader fails with ord('') on a gzip header cut short (b'\x1f\x8b\x08').
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, TypeError)


def member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """A member's path components; refuses absolute paths and ``..`` (never used to write, but never trusted)."""
    normalized = name.replace("\\", "/")
    parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
    if normalized.startswith("/") or ".." in parts or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):
        raise DataError(f"{archive}: refusing archive with unsafe member path {name!r} (absolute or '..')")
    return parts


class _ProgressReader:
    """File wrapper that advances a tqdm bar by the compressed bytes tarfile consumes."""

    def __init__(self, handle: BinaryIO, bar: tqdm) -> None:
        self._handle, self._bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._bar.update(len(chunk))
        return chunk


@dataclass
class ArchiveMember:
    parts: tuple[str, ...]
    info: tarfile.TarInfo
    read: Callable[[], bytes]  # valid only until the next member is requested

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def iter_archive(archive: Path, progress: bool, desc: str) -> Iterator[ArchiveMember]:
    """Stream the members of a (compressed) tar archive in one pass, without touching the disk."""
    try:
        raw = open(archive, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise DataError(f"{archive}: cannot read ({exc.strerror or exc})") from None
    size = os.fstat(raw.fileno()).st_size
    with raw, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                   disable=not progress) as bar:
        try:
            with tarfile.open(fileobj=_ProgressReader(raw, bar), mode="r|*") as tar:  # type: ignore[arg-type]
                for info in tar:
                    parts = member_parts(archive, info.name)
                    if not parts:
                        continue
                    yield ArchiveMember(parts, info, lambda info=info: _read_member(archive, tar, info))
        except _ARCHIVE_ERRORS as exc:
            raise _corrupt_archive(archive, exc) from None


def _corrupt_archive(archive: Path, exc: BaseException) -> DataError:
    return DataError(f"{archive}: corrupt, truncated or not a tar archive ({exc})")


def _read_member(archive: Path, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    # Called from the consumer's frame, outside iter_archive's try: convert errors here too.
    try:
        handle = tar.extractfile(info)
        if handle is None:  # pragma: no cover - callers only read regular files
            raise DataError(f"{archive}:{info.name}: not a regular file")
        return handle.read()
    except _ARCHIVE_ERRORS as exc:
        raise _corrupt_archive(archive, exc) from None


def first_member_top(archive: Path) -> str | None:
    """Top-level folder of an archive's first member (reads one header only)."""
    for member in iter_archive(archive, progress=False, desc=""):
        return member.parts[0]
    return None
