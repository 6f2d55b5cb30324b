"""``--dataset`` beside ``--data``: the official release it names must be what the data is.

``--dataset`` chooses the release downloaded when ``--data`` is omitted. Given with ``--data``, it can only
agree or contradict: ``--dataset cifar100 --data CIFAR10_FOLDER`` would train on CIFAR-10 and record
``"dataset": "cifar100"`` in the run, so a contradiction is refused before anything is read.
"""
from __future__ import annotations

import os

from ..errors import DataError
from .formats import DataOptions, detect_source
from .images import DEFAULT_RESIZE

# the layouts (DatasetSource.kind) each --dataset value refuses: CIFAR-100's release is never CIFAR-10, and
# CIFAR-10's releases are never CIFAR-100; nor are image trees, tarballs of them or folders of class folders
# (all read as CIFAR-10 is: a run would record "cifar100" for data read as another release)
_CONTRADICTS = {"cifar10": {"cifar100"},
                "cifar100": {"python", "binary", "image-folder", "image-tarballs", "class-folders"}}
_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def check_dataset_option(data: str | os.PathLike, dataset: str, labels: str | None = None,
                         resize: str | None = None) -> None:
    """Raise :class:`DataError` when the data at ``data`` is not the release ``dataset`` names."""
    source = detect_source(data, DataOptions(labels, resize or DEFAULT_RESIZE))
    if source.kind in _CONTRADICTS.get(dataset, set()):
        what = source.description.split(" (")[0]
        raise DataError(f"--dataset {dataset}: {data} holds {what}, not {_NAMES.get(dataset, dataset)}; "
                        "--dataset names the release downloaded when --data is omitted: drop it, or give "
                        "--data the release it names")
