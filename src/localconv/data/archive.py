"""Streaming tar archives in memory: members are read, never extracted to disk.

What is accepted, and why (see docs/data.md, "Archives"):

* The compressed stream is decompressed here (gzip, bzip2, xz or none), not by tarfile's stream
  mode, which never checks a checksum: after the last member the rest of the stream is read to
  its end, so the gzip CRC-32 and length (bzip2 / xz checks) are verified, and a stream with
  damaged, missing or extra data (bytes after the last compressed stream) is refused.
* tarfile ends its member list silently at the first zero block or unreadable header after the
  first one: a damaged header at 97% of an archive would give a shorter dataset with no error.
  So everything from where tarfile stopped to the end of the stream must be zero bytes (the
  end-of-archive marker and its padding, at least two 512-byte blocks).
* Only regular files and folders: a symbolic or hard link, device or FIFO member refuses the
  archive (nothing is ever followed or created), and so does a member path that is absolute or
  holds ``..``, or a name that occurs twice (it would silently double or replace an image).
* Bounded reads: a member larger than the caller's bound (an image is kilobytes) or archives
  holding more than :data:`MAX_ARCHIVE_BYTES` are refused from their headers, before reading.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from ..errors import DataError
from .files import MIB, open_regular

# TypeError: tarfile's stream reader fails with ord('') on a gzip header cut short (b'\x1f\x8b\x08').
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, TypeError)

MAX_ARCHIVE_BYTES = 4096 * MIB  # member data per archive (the CIFAR-10 JPEG train.tar.gz holds ~0.2 GB)
MAX_PADDING_BYTES = 16 * MIB  # zero bytes accepted after the end-of-archive marker (tar records are 10 KiB)
_END_MARKER_BYTES = 2 * tarfile.BLOCKSIZE
_TAIL_BYTES = 4 * tarfile.RECORDSIZE  # more than tarfile's read-ahead of one record
_CHUNK = 1 << 20

_MEMBER_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
                 tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}


def member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """A member's path components; refuses absolute paths and ``..`` (never used to write, but never trusted)."""
    normalized = name.replace("\\", "/")
    parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
    if normalized.startswith("/") or ".." in parts or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):
        raise DataError(f"{archive}: refusing archive with unsafe member path {name!r} (absolute or '..')")
    return parts


class _ProgressReader:
    """File wrapper that advances a tqdm bar by the compressed bytes consumed."""

    def __init__(self, handle: BinaryIO, bar: tqdm) -> None:
        self._handle, self._bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._bar.update(len(chunk))
        return chunk


class _TailReader:
    """The decompressed stream as tarfile reads it, remembering its position and the last bytes read."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.position, self.tail = handle, 0, bytearray()

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.position += len(chunk)
        self.tail += chunk
        if len(self.tail) > _TAIL_BYTES:
            del self.tail[:-_TAIL_BYTES]
        return chunk


class _StrictDecompressor:
    """bzip2 / xz decompression that, unlike ``bz2.BZ2File`` and ``lzma.LZMAFile``, refuses data after
    the last compressed stream (those classes drop it silently) and a stream cut short."""

    def __init__(self, reader: BinaryIO, factory: Callable[[], Any]) -> None:
        self._reader, self._factory = reader, factory
        self._decompressor, self._input = factory(), b""

    def read(self, size: int = -1) -> bytes:
        want = size if size >= 0 else 1 << 62
        out = bytearray()
        while len(out) < want:
            if self._decompressor.eof:
                rest = self._decompressor.unused_data or self._reader.read(_CHUNK)
                if not rest:
                    break
                self._decompressor, self._input = self._factory(), rest  # a next stream, or garbage: raises
            if self._decompressor.needs_input and not self._input:
                self._input = self._reader.read(_CHUNK)
                if not self._input:
                    raise EOFError("compressed stream ends before its end-of-stream marker")
            out += self._decompressor.decompress(self._input, want - len(out))
            self._input = b""
        return bytes(out)


@dataclass
class ArchiveMember:
    parts: tuple[str, ...]
    info: tarfile.TarInfo
    read: Callable[[], bytes]  # valid only until the next member is requested

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def _decompressed(raw: BinaryIO, reader: BinaryIO) -> BinaryIO:
    """A reader of ``reader``'s decompressed content, chosen by the magic bytes of ``raw`` (not by the
    file name); ``reader`` reads ``raw`` (through the progress bar)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=reader, mode="rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return _StrictDecompressor(reader, bz2.BZ2Decompressor)  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return _StrictDecompressor(reader, lzma.LZMADecompressor)  # type: ignore[return-value]
    return reader


def iter_archive(archive: Path, progress: bool, desc: str, member_limit: int) -> Iterator[ArchiveMember]:
    """Stream the members of a (compressed) tar archive in one pass, without touching the disk.

    Every member header is checked (type, path, duplicate, size against ``member_limit``); when the
    consumer has taken the last member, the end of the stream is verified (see the module doc).
    """
    fd, size = open_regular(archive, "archive")
    raw = os.fdopen(fd, "rb")
    with raw, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                   disable=not progress) as bar:
        try:
            stream = _TailReader(_decompressed(raw, _ProgressReader(raw, bar)))  # type: ignore[arg-type]
            seen: dict[tuple[str, ...], bool] = {}
            total = 0
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[arg-type]
                for info in tar:
                    parts = member_parts(archive, info.name)
                    _check_member(archive, info, parts, seen, member_limit)
                    total += info.size
                    if total > MAX_ARCHIVE_BYTES:
                        raise DataError(f"{archive}: members hold more than {MAX_ARCHIVE_BYTES // MIB} MiB; "
                                        f"refusing an archive this large")
                    if not parts:
                        continue
                    yield ArchiveMember(parts, info, lambda info=info: _read_member(archive, tar, info))
                _check_end(archive, stream, tar.offset)
        except _ARCHIVE_ERRORS as exc:
            raise _corrupt_archive(archive, exc) from None


def _check_member(archive: Path, info: tarfile.TarInfo, parts: tuple[str, ...],
                  seen: dict[tuple[str, ...], bool], member_limit: int) -> None:
    shown = f"{archive}:{info.name}"
    if not (info.isfile() or info.isdir()):
        kind = _MEMBER_KINDS.get(info.type, f"member type {info.type!r}")
        raise DataError(f"{shown}: not a regular file ({kind}; archives may hold only files and folders, "
                        f"links are not followed)")
    if info.isfile() and info.size > member_limit:
        raise DataError(f"{shown}: member is {info.size / MIB:.1f} MiB, more than the {member_limit // MIB} MiB "
                        f"accepted for one file of this dataset")
    if parts in seen and not (seen[parts] and info.isdir()):
        raise DataError(f"{shown}: the archive holds this member twice; refusing an ambiguous archive")
    seen[parts] = info.isdir()


def _check_end(archive: Path, stream: _TailReader, offset: int) -> None:
    """Everything from ``offset`` (where tarfile stopped) to the end of the stream must be zero bytes."""
    unread_by_tar = stream.position - offset
    if unread_by_tar < 0 or unread_by_tar > len(stream.tail):  # pragma: no cover - tarfile reads one record ahead
        raise DataError(f"{archive}: cannot verify the end of the archive (internal read-ahead)")
    after = bytes(stream.tail[len(stream.tail) - unread_by_tar:])
    padding = 0
    while True:
        if after.count(0) != len(after):
            at = offset + padding + next(i for i, byte in enumerate(after) if byte)
            raise DataError(f"{archive}: corrupt archive: data at byte {at} of the tar stream after the member "
                            f"list ended at byte {offset} (a damaged member header or a zero block inside the "
                            f"archive)")
        padding += len(after)
        if padding > MAX_PADDING_BYTES:
            raise DataError(f"{archive}: more than {MAX_PADDING_BYTES // MIB} MiB of padding after the last member")
        after = stream.handle.read(_CHUNK)  # reading to the end verifies the gzip/bzip2/xz checksum and length
        if not after:
            break
    if padding < _END_MARKER_BYTES:
        raise DataError(f"{archive}: truncated archive: the end-of-archive marker is missing after byte {offset}")


def _corrupt_archive(archive: Path, exc: BaseException) -> DataError:
    if isinstance(exc, DataError):
        return exc
    return DataError(f"{archive}: corrupt, truncated or not a tar archive ({exc})")


def _read_member(archive: Path, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    # Called from the consumer's frame, outside iter_archive's try: convert errors here too.
    try:
        handle = tar.extractfile(info)
        if handle is None:  # pragma: no cover - _check_member lets only files and folders through
            raise DataError(f"{archive}:{info.name}: not a regular file")
        data = handle.read(info.size)
    except _ARCHIVE_ERRORS as exc:
        raise _corrupt_archive(archive, exc) from None
    if len(data) != info.size:
        raise DataError(f"{archive}:{info.name}: truncated member ({len(data)} of {info.size} bytes)")
    return data


def first_member_top(archive: Path) -> str | None:
    """Top-level folder of an archive's first member (reads one header only)."""
    for member in iter_archive(archive, progress=False, desc="", member_limit=MAX_ARCHIVE_BYTES):
        return member.parts[0]
    return None
