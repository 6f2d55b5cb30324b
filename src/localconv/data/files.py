"""Reading input files safely: only regular files, never more than a stated number of bytes.

A FIFO given as data would block ``open()`` forever, a character device (``/dev/zero``) would be
read without end. Files are therefore opened with ``O_NONBLOCK`` (an open that cannot block)
and checked with ``fstat`` on the open descriptor (no race between the check and the read)
before a single byte is read; the size is checked against a bound before the file is read.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import DataError

MIB = 1 << 20
# One image file (in a tree, an archive or given to predict). Photos are a few MB; a larger
# "image" is almost surely not one, and reading it whole could exhaust the memory.
MAX_IMAGE_BYTES = 64 * MIB
# One batch file of an official release (CIFAR-100's train pickle is about 160 MB).
MAX_BATCH_BYTES = 512 * MIB


def is_utf8(name: str) -> bool:
    """Whether ``name`` (as os.scandir / tarfile give it: undecodable bytes as lone surrogates) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str | os.PathLike) -> str:
    """``path`` as it can be printed: bytes that are not UTF-8 shown as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def kind_of(mode: int) -> str:
    """A reader's word for what a stat mode is ('FIFO', 'symbolic link', ...)."""
    for test, word in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return word
    return "special file"


def check_file_or_folder(path: Path, shown: str | os.PathLike) -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file or folder."""
    try:
        info = path.stat()
    except OSError as exc:
        raise DataError(f"{shown}: cannot read ({exc.strerror or exc})") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise DataError(f"{shown}: is a {kind_of(info.st_mode)}, not a regular file or folder")
    return info


def open_regular(path: str | os.PathLike, what: str = "file") -> tuple[int, int]:
    """Open ``path`` for reading without blocking; returns (descriptor, size). Refuses non-regular files."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise DataError(f"{name}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{name}: cannot read {what} (it is a {kind_of(info.st_mode)}, not a regular file)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_regular_file(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The whole content of the regular file ``path``, refusing files larger than ``limit`` bytes."""
    fd, size = open_regular(path, what)
    with os.fdopen(fd, "rb") as handle:
        if size > limit:
            raise DataError(f"{os.fspath(path)}: {what} is {size / MIB:.1f} MiB, more than the "
                            f"{limit // MIB} MiB accepted for one {what}")
        try:
            data = handle.read(limit + 1)  # the file may have grown since fstat
        except OSError as exc:
            raise DataError(f"{os.fspath(path)}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise DataError(f"{os.fspath(path)}: {what} is more than the {limit // MIB} MiB accepted for one {what}")
    return data
