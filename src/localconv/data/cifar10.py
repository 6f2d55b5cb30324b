"""``load_cifar10``: find or download the data, then serve it from the decoded cache when possible.

``load_training_subset``: some of its training images, decoding only those when the cache is cold.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .cache import decoded_cache_path, default_cache_dir, fingerprint, load_decoded, save_decoded
from .cifar_data import CifarData
from .download import OFFICIAL_RELEASES, download_file, verify_md5
from .formats import DataOptions, DatasetSource, detect_source, python_release_archive
from .images import DEFAULT_RESIZE
from .subset import Selector, TrainingSubset, load_subset, save_subset, subset_cache_path


def load_cifar10(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, url: str | None = None, md5: str | None = None, *,
                 labels: str | None = None, resize: str = DEFAULT_RESIZE, dataset: str = "cifar10",
                 test_split: float | None = None) -> CifarData:
    """Load CIFAR-10, CIFAR-100 or any dataset in an accepted layout as uint8 arrays.

    ``source``: a path in one of the layouts of :mod:`localconv.data.formats`; None means the
    official python release named by ``dataset`` ('cifar10' or 'cifar100') in the cache folder,
    downloaded from ``url`` (md5-checked) if absent. ``labels``: CIFAR-100's 'fine' (default) or
    'coarse' labels. ``resize``: 'none' (image trees must be 32x32) or 'shorter-side'. ``test_split``: the
    fraction of each class held out as test images of a folder of class folders without train/ and test/.
    ``cache_dir``: default ``$LOCALCONV_CACHE`` or ``~/.cache/localconv``. The decoded arrays are
    cached there, so a second load of the same, unchanged source with the same options skips decoding.
    The returned data's ``classes`` / ``num_classes`` say how many outputs a classifier needs.
    """
    data_source, cache_file, key, archive_to_verify, md5 = _resolve(source, cache_dir, progress, url, md5, labels,
                                                                    resize, dataset, test_split)
    cached = load_decoded(cache_file, data_source.description, key)
    if cached is not None:
        return cached
    if archive_to_verify is not None:
        verify_md5(archive_to_verify, md5)
    data = data_source.read(progress)
    save_decoded(cache_file, data, key)
    return data


def load_training_subset(select: Selector, source: str | os.PathLike | None = None,
                         cache_dir: str | os.PathLike | None = None, progress: bool = True, url: str | None = None,
                         md5: str | None = None, *, labels: str | None = None, resize: str = DEFAULT_RESIZE,
                         dataset: str = "cifar10", test_split: float | None = None) -> TrainingSubset:
    """The training images ``select(n)`` (positions in the ``n`` training images, as :func:`load_cifar10`
    orders them) of the data :func:`load_cifar10` would return for the same arguments.

    A warm decoded cache is used. On a cold one, an image tree (folder or tarballs) is read exactly as
    :func:`load_cifar10` reads it (every file, each archive to its end with its checksum), but only the
    selected images are decoded; they are cached beside the full-data entry, under the same key, as
    ``<kind>-<key>.subset.npz`` (used again only for the same selection). Other layouts are decoded and
    cached whole (their batches are not per-image files).
    """
    data_source, cache_file, key, archive_to_verify, md5 = _resolve(source, cache_dir, progress, url, md5, labels,
                                                                    resize, dataset, test_split)
    cached = load_decoded(cache_file, data_source.description, key)
    if cached is not None:
        return TrainingSubset.of(cached, select)
    if archive_to_verify is not None:
        verify_md5(archive_to_verify, md5)
    if data_source.subset_reader is not None:
        subset_file = subset_cache_path(cache_file)
        subset = load_subset(subset_file, select, data_source.description, key)
        if subset is None:
            subset = data_source.read_training_subset(progress, select)
            save_subset(subset_file, subset, key)
        return subset
    data = data_source.read(progress)
    save_decoded(cache_file, data, key)
    return TrainingSubset.of(data, select)


def _resolve(source: str | os.PathLike | None, cache_dir: str | os.PathLike | None, progress: bool,
             url: str | None, md5: str | None, labels: str | None, resize: str,
             dataset: str, test_split: float | None = None
             ) -> tuple[DatasetSource, Path, str, Path | None, str | None]:
    """The source (downloaded if needed), its decoded-cache file and key, the archive to md5-check before
    decoding (one found in the cache folder, not downloaded now), and the md5 to check it against."""
    options = DataOptions(labels, resize, test_split)
    if cache_dir is not None and not os.fspath(cache_dir):  # Path('') would silently mean the current folder
        raise DataError("--cache-dir '': give a folder name (use . for the current folder)")
    if source is not None and not os.fspath(source):
        raise DataError("--data '': give a file or folder name (use . for the current folder)")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    archive_to_verify = None
    if source is None:
        if dataset not in OFFICIAL_RELEASES:
            raise DataError(f"--dataset must be one of {', '.join(OFFICIAL_RELEASES)}, got {dataset!r}")
        if labels is not None and dataset != "cifar100":  # before any download
            raise DataError(f"--labels {labels}: only the CIFAR-100 release has fine and coarse labels; "
                            f"give --dataset cifar100 or --data PATH/TO/cifar-100-python.tar.gz")
        default_url, default_md5, file_name = OFFICIAL_RELEASES[dataset]
        url, md5 = url or default_url, md5 or default_md5
        archive = cache_root / file_name
        if os.path.lexists(archive):
            archive_to_verify = archive  # placed there by hand or by an older run: check before decoding
        else:
            download_file(url, archive, md5, progress=progress)  # verified while downloading
        data_source = python_release_archive(archive, options, cifar100=dataset == "cifar100")
    else:
        data_source = detect_source(source, options)
    key = fingerprint(data_source.kind, data_source.path, data_source.files, data_source.listing,
                      by_content=data_source.keyed_by_content)
    return data_source, decoded_cache_path(cache_root, data_source.kind, key), key, archive_to_verify, md5

