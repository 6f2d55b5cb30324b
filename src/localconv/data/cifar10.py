"""``load_cifar10``: find or download the data, then serve it from the decoded cache when possible."""
from __future__ import annotations

import os
from pathlib import Path

from .cache import decoded_cache_path, default_cache_dir, fingerprint, load_decoded, save_decoded
from .cifar_data import CifarData
from .download import CIFAR10_PYTHON_ARCHIVE, CIFAR10_PYTHON_MD5, CIFAR10_PYTHON_URL, download_file, verify_md5
from .formats import detect_source, python_release_archive


def load_cifar10(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, url: str = CIFAR10_PYTHON_URL, md5: str = CIFAR10_PYTHON_MD5) -> CifarData:
    """Load CIFAR-10 (or any dataset in an accepted layout) as uint8 arrays.

    ``source``: a path in one of the layouts of :mod:`localconv.data.formats`; None means the
    official python release in the cache folder, downloaded from ``url`` (md5-checked) if absent.
    ``cache_dir``: default ``$LOCALCONV_CACHE`` or ``~/.cache/localconv``. The decoded arrays are
    cached there, so a second load of the same, unchanged source skips decoding.
    """
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    archive_to_verify = None
    if source is None:
        archive = cache_root / CIFAR10_PYTHON_ARCHIVE
        if archive.is_file():
            archive_to_verify = archive  # placed there by hand or by an older run: check before decoding
        else:
            download_file(url, archive, md5, progress=progress)  # verified while downloading
        dataset = python_release_archive(archive)
    else:
        dataset = detect_source(source)
    cache_file = decoded_cache_path(cache_root, dataset.kind, fingerprint(dataset.kind, dataset.path, dataset.files))
    cached = load_decoded(cache_file, dataset.description)
    if cached is not None:
        return cached
    if archive_to_verify is not None:
        verify_md5(archive_to_verify, md5)
    data = dataset.read(progress)
    save_decoded(cache_file, data)
    return data
