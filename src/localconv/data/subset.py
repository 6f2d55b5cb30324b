"""Some images of a training split, at their positions in the whole split (``localconv doctor`` uses ~6,000
of 50,000: decoding only those on a cold cache saves most of the decode time)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .cache import check_entry_key, read_npz, write_npz
from .cifar_data import CifarData, check_class_names

# Given the number of images in the whole training split, the positions to keep (any order; duplicates
# are dropped). Positions are those of the split as load_cifar10 orders it.
Selector = Callable[[int], np.ndarray]


@dataclass
class TrainingSubset:
    """Training images ``positions`` (sorted) of a split of ``total`` images, as :func:`load_cifar10` orders it."""

    images: np.ndarray     # uint8 [k, 3, 32, 32]
    labels: np.ndarray     # int64 [k]
    positions: np.ndarray  # int64 [k], sorted, unique
    total: int
    classes: list[str]
    source: str

    @classmethod
    def of(cls, data: CifarData, select: Selector) -> TrainingSubset:
        """The selected images of fully decoded ``data``."""
        total = len(data.train_labels)
        positions = selected_positions(select, total, data.source)
        return cls(np.ascontiguousarray(data.train_images[positions]), data.train_labels[positions], positions,
                   total, list(data.classes), data.source)

    def validate(self) -> None:
        check_class_names(self.classes, self.source)
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (3, 32, 32) or \
                self.labels.shape != (len(self.images),) or self.positions.shape != self.labels.shape:
            raise DataError(f"{self.source}: inconsistent training subset arrays")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"{self.source}: a training subset label is out of range 0..{len(self.classes) - 1}")


def selected_positions(select: Selector, total: int, source: str) -> np.ndarray:
    """``select(total)`` as sorted unique int64 positions, each in ``0..total-1``."""
    positions = np.unique(np.asarray(select(total), dtype=np.int64))
    if positions.size and (positions[0] < 0 or positions[-1] >= total):
        raise DataError(f"{source}: a selected training image is outside 0..{total - 1}")
    return positions


def subset_cache_path(full_cache_file: Path) -> Path:
    """Where a subset of the data cached at ``full_cache_file`` is kept (same key: same source files, options)."""
    return full_cache_file.with_name(full_cache_file.stem + ".subset.npz")


def load_subset(path: Path, select: Selector, source: str, key: str) -> TrainingSubset | None:
    """The subset cached at ``path`` if it was written under ``key`` and holds exactly the images ``select``
    picks now, else None."""

    def build(arrays: Any) -> TrainingSubset | None:
        check_entry_key(arrays, key, path)
        total = int(arrays["total"])
        positions = arrays["positions"]
        if not np.array_equal(positions, selected_positions(select, total, source)):
            return None  # another selection (other doctor options): decoded again, then replaced
        subset = TrainingSubset(arrays["images"], arrays["labels"], positions, total,
                                [str(name) for name in arrays["classes"]], source)
        subset.validate()
        return subset

    return read_npz(path, build, "decoded-subset")


def save_subset(path: Path, subset: TrainingSubset, key: str) -> None:
    """Store ``subset`` read under ``key`` at ``path`` atomically; a cache that cannot be written only warns."""
    write_npz(path, "decoded-subset", images=subset.images, labels=subset.labels, positions=subset.positions,
              total=np.int64(subset.total), classes=np.array(subset.classes, dtype=str), cache_key=np.array(key))
