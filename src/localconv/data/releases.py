"""The official CIFAR releases: CIFAR-10 python pickles and binary records, CIFAR-100 python pickles.

File names, parsers and the assembly of the parsed batches into a :class:`CifarData`.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .cifar_data import CIFAR10_CLASSES, IMAGE_BYTES, IMAGE_SIDE, CifarData, check_class_names, check_label_range
from .safe_pickle import safe_load

PYTHON_TOP = "cifar-10-batches-py"
BINARY_TOP = "cifar-10-batches-bin"
PYTHON_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
PYTHON_TEST = "test_batch"
PYTHON_META = "batches.meta"
BINARY_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
BINARY_TEST = "test_batch.bin"
BINARY_META = "batches.meta.txt"
CIFAR100_TOP = "cifar-100-python"
CIFAR100_TRAIN, CIFAR100_TEST, CIFAR100_META = "train", "test", "meta"
LABEL_SETS = ("fine", "coarse")  # CIFAR-100: 100 fine classes or 20 coarse superclasses

# The md5 of each batch file of the official python releases, with its image count
# (https://www.cs.toronto.edu/~kriz/cifar.html; the same values torchvision checks). A batch
# file with an official name and the official image count is that file, and must match:
# flipped pixel bytes in a pickle leave it loadable, and only the checksum can tell.
OFFICIAL_BATCHES: dict[tuple[str, str], tuple[int, str]] = {
    (PYTHON_TOP, "data_batch_1"): (10000, "c99cafc152244af753f735de768cd75f"),
    (PYTHON_TOP, "data_batch_2"): (10000, "d4bba439e000b95fd0a9bffe97cbabec"),
    (PYTHON_TOP, "data_batch_3"): (10000, "54ebc095f3ab1f0389bbae665268c751"),
    (PYTHON_TOP, "data_batch_4"): (10000, "634d18415352ddfa80567beed471001a"),
    (PYTHON_TOP, "data_batch_5"): (10000, "482c414d41f54cd18b22e5b47cb7c3cb"),
    (PYTHON_TOP, "test_batch"): (10000, "40351d587109b95175f43aff81a1287e"),
    (CIFAR100_TOP, CIFAR100_TRAIN): (50000, "16019d7e3df5f24257cddd939b257f8d"),
    (CIFAR100_TOP, CIFAR100_TEST): (10000, "f0ef6b0ae62326f3e7ffdfab6717acfc"),
}


def _str_keys(obj: dict) -> dict[str, object]:
    """Batch dicts have bytes keys (b'data') when written by Python 2/3 with bytes; normalize to str."""
    return {key.decode("latin-1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def parse_python_batch(raw: bytes, name: str, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 [n, 3, 32, 32], int64 [n]); labels are range-checked by the caller.

    ``label_key``: 'labels' (CIFAR-10), 'fine_labels' or 'coarse_labels' (CIFAR-100).
    """
    obj = safe_load(raw, name)
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a pickled dict with 'data' and '{label_key}', got {type(obj).__name__}")
    batch = _str_keys(obj)
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(f"{name}: missing field '{key}' (fields: {', '.join(sorted(batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        what = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name}: field 'data' must be a uint8 array [n, {IMAGE_BYTES}], got {what}")
    try:
        labels = np.asarray(batch[label_key])
    except (ValueError, TypeError):  # ragged or otherwise not an array of numbers
        labels = np.empty(0, dtype=object)
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise DataError(f"{name}: field '{label_key}' must be {data.shape[0]} integers, "
                        f"got {labels.dtype} {list(labels.shape)}")
    filenames = batch.get("filenames")
    if isinstance(filenames, list) and len(filenames) != data.shape[0]:  # a structural damage check
        raise DataError(f"{name}: field 'filenames' has {len(filenames)} entries for {data.shape[0]} images")
    return data.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


def parse_python_meta(raw: bytes, name: str, key: str = "label_names") -> list[str]:
    obj = safe_load(raw, name)
    meta = _str_keys(obj) if isinstance(obj, dict) else {}
    names = meta.get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{name}: expected a pickled dict with a '{key}' list of strings")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def parse_binary_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 3072 pixel bytes -> (uint8 [n, 3, 32, 32], int64 [n])."""
    record = 1 + IMAGE_BYTES
    if not raw or len(raw) % record:
        raise DataError(f"{name}: {len(raw)} bytes is not a whole number of {record}-byte records "
                        f"(truncated or not a CIFAR binary batch)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    images = records[:, 1:].reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE).copy()
    return images, records[:, 0].astype(np.int64)


def parse_binary_meta(raw: bytes, name: str) -> list[str]:
    try:
        lines = [line.strip() for line in raw.decode("utf-8").splitlines()]
    except UnicodeDecodeError:
        raise DataError(f"{name}: not a text file of class names") from None
    while lines and not lines[-1]:  # the official file ends in blank lines
        lines.pop()
    if not lines:
        raise DataError(f"{name}: no class names")
    if "" in lines:  # a blank line inside would shift every later label's name
        raise DataError(f"{name}:{lines.index('') + 1}: blank line between class names")
    return lines


@dataclass(frozen=True)
class Release:
    """File names and parsers of one official release."""

    label: str
    top: str
    train: list[str]
    test: str
    meta: str
    parse_batch: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]
    parse_meta: Callable[[bytes, str], list[str]]
    default_classes: tuple[str, ...] | None = tuple(CIFAR10_CLASSES)  # used when the meta file is absent

    @property
    def batch_names(self) -> list[str]:
        return [*self.train, self.test]

    @property
    def all_names(self) -> list[str]:
        return [*self.batch_names, self.meta]


PYTHON_RELEASE = Release("CIFAR-10 python release", PYTHON_TOP, PYTHON_TRAIN, PYTHON_TEST, PYTHON_META,
                          parse_python_batch, parse_python_meta)
BINARY_RELEASE = Release("CIFAR-10 binary release", BINARY_TOP, BINARY_TRAIN, BINARY_TEST, BINARY_META,
                          parse_binary_batch, parse_binary_meta)


def cifar100_release(labels: str = "fine") -> Release:
    """The CIFAR-100 python release read with its ``fine`` (100) or ``coarse`` (20) labels."""
    if labels not in LABEL_SETS:
        raise DataError(f"--labels must be one of {', '.join(LABEL_SETS)}, got {labels!r}")
    return Release(f"CIFAR-100 python release ({labels} labels)", CIFAR100_TOP, [CIFAR100_TRAIN], CIFAR100_TEST,
                   CIFAR100_META, functools.partial(parse_python_batch, label_key=f"{labels}_labels"),
                   functools.partial(parse_python_meta, key=f"{labels}_label_names"), default_classes=None)


def check_official_md5(top: str, name: str, raw: bytes, count: int, shown: str) -> None:
    """Refuse a batch that is the official file by name and image count but not by md5 (see OFFICIAL_BATCHES)."""
    official = OFFICIAL_BATCHES.get((top, name))
    if official is None or official[0] != count:
        return
    actual = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if actual != official[1]:
        raise DataError(f"{shown}: md5 {actual} differs from the official release's {official[1]} although it "
                        f"holds the official {count} images: the file is damaged (download the release again)")


def assemble_release(release: Release, files: dict[str, bytes], where: str, prefix: str,
                     description: str) -> CifarData:
    """Parse the batch files of ``release`` (``files``: name -> bytes; ``prefix`` + name names a file)."""
    required = release.batch_names if release.default_classes is not None else release.all_names
    missing = [name for name in required if name not in files]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} ({release.label}: "
                        f"{', '.join(release.all_names)})")
    # batches.meta only carries the class names; without it the standard CIFAR-10 names apply.
    classes = (release.parse_meta(files[release.meta], prefix + release.meta)
               if release.meta in files else list(release.default_classes or ()))
    check_class_names(classes, prefix + release.meta)
    parsed = {}
    for name in release.batch_names:
        images, labels = release.parse_batch(files[name], prefix + name)
        check_label_range(labels, len(classes), f"{prefix}{name}: labels")
        check_official_md5(release.top, name, files[name], len(labels), prefix + name)
        parsed[name] = (images, labels)
    train = [parsed[name] for name in release.train]
    return CifarData(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=parsed[release.test][0],
        test_labels=parsed[release.test][1],
        classes=classes,
        source=description,
    )
