"""Download of the official CIFAR-10 / CIFAR-100 python releases into the cache folder (md5-verified, atomic)."""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from .cache import atomic_file
from .files import open_regular

CIFAR10_PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_PYTHON_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR100_PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_PYTHON_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_PYTHON_ARCHIVE = "cifar-100-python.tar.gz"
# --dataset NAME -> (url, md5, archive file name in the cache folder)
OFFICIAL_RELEASES = {
    "cifar10": (CIFAR10_PYTHON_URL, CIFAR10_PYTHON_MD5, CIFAR10_PYTHON_ARCHIVE),
    "cifar100": (CIFAR100_PYTHON_URL, CIFAR100_PYTHON_MD5, CIFAR100_PYTHON_ARCHIVE),
}

_CHUNK = 1 << 20


def _offline_help(url: str, md5: str, dest: Path) -> str:
    return (f"download {url} (md5 {md5}) on a machine with network access, then either pass "
            f"--data PATH/TO/{dest.name} or copy it to {dest} "
            f"(the cache folder is $LOCALCONV_CACHE, default ~/.cache/localconv)")


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    fd, _ = open_regular(path)
    try:
        with os.fdopen(fd, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    """Raise :class:`DataError` unless ``path`` has the md5 checksum ``md5``."""
    actual = file_md5(path)
    if actual != md5.lower():
        raise DataError(f"{path}: md5 {actual} does not match the expected {md5}; the file is corrupt or "
                        f"not the official release: delete it to download it again")


def download_file(url: str, dest: Path, md5: str, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, verifying its md5; ``dest`` appears only once complete and verified."""
    help_text = _offline_help(url, md5, dest)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (URL is ours or a test's)
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {help_text}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {url} ({reason}): no network access? {help_text}") from None
    digest = hashlib.md5(usedforsecurity=False)
    total = int(response.headers.get("Content-Length") or 0) or None
    try:
        with response, atomic_file(dest) as out, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {dest.name}",
            disable=not progress,
        ) as bar:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
            if digest.hexdigest() != md5.lower():
                raise DataError(f"download of {url} is corrupt: md5 {digest.hexdigest()} does not match the "
                                f"expected {md5}; nothing was kept, try again or {help_text}")
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"download of {url} to {dest} failed ({exc}); nothing was kept; {help_text}") from None
    return dest

