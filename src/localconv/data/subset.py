"""Some images of a training split, at their positions in the whole split (``localconv doctor`` uses ~6,000
of 50,000: decoding only those on a cold cache saves most of the decode time)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
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


def selected_positions(select: Selector, total: int, source: str) -> np.ndarray:
    """``select(total)`` as sorted unique int64 positions, each in ``0..total-1``."""
    positions = np.unique(np.asarray(select(total), dtype=np.int64))
    if positions.size and (positions[0] < 0 or positions[-1] >= total):
        raise DataError(f"{source}: a selected training image is outside 0..{total - 1}")
    return positions
