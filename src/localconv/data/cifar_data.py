"""The in-memory dataset every reader produces: :class:`CifarData` and its sanity checks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .files import is_utf8

# Label index -> name, in the order of the official releases (and of sorted folder names).
CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

IMAGE_SIDE = 32
IMAGE_BYTES = 3 * IMAGE_SIDE * IMAGE_SIDE  # one image in the official releases: R, G, B planes of 32x32


@dataclass
class CifarData:
    """Decoded CIFAR-style dataset held as uint8 arrays (NCHW, RGB)."""

    train_images: np.ndarray  # uint8 [N, 3, 32, 32]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, 3, 32, 32]
    test_labels: np.ndarray  # int64 [M]
    classes: list[str]  # index -> name
    source: str  # human-readable description of where it came from (format + path)

    @property
    def num_classes(self) -> int:
        """How many classes the data has (the classifier's number of outputs); labels are 0..num_classes-1."""
        return len(self.classes)

    def validate(self) -> None:
        """Raise :class:`DataError` unless shapes, dtypes, class names and label ranges are consistent."""
        check_class_names(self.classes, self.source)
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIDE, IMAGE_SIDE):
                raise DataError(f"{self.source}: {split} images must be uint8 [N, 3, 32, 32], "
                                f"got {images.dtype} {list(images.shape)}")
            if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
                raise DataError(f"{self.source}: {split} labels must be int64 [{images.shape[0]}], "
                                f"got {labels.dtype} {list(labels.shape)}")
            if images.shape[0] == 0:
                raise DataError(f"{self.source}: the {split} split holds no images")
            check_label_range(labels, len(self.classes), f"{self.source}: {split} labels")


def check_class_names(classes: list[str], where: str) -> None:
    """Refuse an empty list, a blank name or a name given twice (two labels would print the same)."""
    if not classes:
        raise DataError(f"{where}: no class names")
    seen: set[str] = set()
    for index, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: class name {index} is empty ({name!r})")
        if not is_utf8(name):
            raise DataError(f"{where}: class name {index} ({name!r}) is not valid UTF-8")
        if name in seen:
            raise DataError(f"{where}: class name {name!r} occurs twice (labels {classes.index(name)} and {index})")
        seen.add(name)


def check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise :class:`DataError` naming the first label outside ``0..num_classes-1``."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        index = int(bad[0])
        raise DataError(f"{where}[{index}] = {int(labels[index])} is out of range 0..{num_classes - 1} "
                        f"({bad.size} bad label(s))")
