"""The two official CIFAR-10 releases: python pickles and binary records, file names and parsers."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .cifar_data import CIFAR10_CLASSES, IMAGE_BYTES, IMAGE_SIDE, CifarData, check_label_range
from .safe_pickle import safe_load

PYTHON_TOP = "cifar-10-batches-py"
BINARY_TOP = "cifar-10-batches-bin"
PYTHON_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
PYTHON_TEST = "test_batch"
PYTHON_META = "batches.meta"
BINARY_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
BINARY_TEST = "test_batch.bin"
BINARY_META = "batches.meta.txt"


def _str_keys(obj: dict) -> dict[str, object]:
    """Batch dicts have bytes keys (b'data') when written by Python 2/3 with bytes; normalize to str."""
    return {key.decode("latin-1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def parse_python_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 [n, 3, 32, 32], int64 [n]); labels are range-checked by the caller."""
    obj = safe_load(raw, name)
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a pickled dict with 'data' and 'labels', got {type(obj).__name__}")
    batch = _str_keys(obj)
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{name}: missing field '{key}' (fields: {', '.join(sorted(batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        what = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name}: field 'data' must be a uint8 array [n, {IMAGE_BYTES}], got {what}")
    try:
        labels = np.asarray(batch["labels"])
    except (ValueError, TypeError):  # ragged or otherwise not an array of numbers
        labels = np.empty(0, dtype=object)
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise DataError(f"{name}: field 'labels' must be {data.shape[0]} integers, "
                        f"got {labels.dtype} {list(labels.shape)}")
    return data.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


def parse_python_meta(raw: bytes, name: str) -> list[str]:
    obj = safe_load(raw, name)
    meta = _str_keys(obj) if isinstance(obj, dict) else {}
    names = meta.get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{name}: expected a pickled dict with a 'label_names' list of strings")
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
        names = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise DataError(f"{name}: not a text file of class names") from None
    if not names:
        raise DataError(f"{name}: no class names")
    return names


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


def assemble_release(release: Release, files: dict[str, bytes], where: str, prefix: str,
                     description: str) -> CifarData:
    """Parse the batch files of ``release`` (``files``: name -> bytes; ``prefix`` + name names a file)."""
    missing = [name for name in release.batch_names if name not in files]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)} ({release.label}: "
                        f"{', '.join(release.all_names)})")
    # batches.meta only carries the class names; without it the standard CIFAR-10 names apply.
    classes = (release.parse_meta(files[release.meta], prefix + release.meta)
               if release.meta in files else list(CIFAR10_CLASSES))
    parsed = {}
    for name in release.batch_names:
        images, labels = release.parse_batch(files[name], prefix + name)
        check_label_range(labels, len(classes), f"{prefix}{name}: labels")
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
