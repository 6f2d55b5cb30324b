"""Train/validation/test selection and device-resident uint8 tensors.

Subsets are drawn with a fixed permutation (independent of the training seed), so
``--limit-train``/``--val-split`` pick the same images in every run and the validation
images never overlap the training images, whatever the order of the source files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LocalconvError

SPLIT_SEED = 20161106  # fixed: subsets must not depend on the training seed


@dataclass
class Splits:
    train_images: torch.Tensor  # uint8 [N, 3, 32, 32]
    train_labels: torch.Tensor  # int64 [N]
    val_images: torch.Tensor | None
    val_labels: torch.Tensor | None
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def to(self, device: torch.device | str) -> "Splits":
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return Splits(*(move(t) for t in (self.train_images, self.train_labels, self.val_images,
                                          self.val_labels, self.test_images, self.test_labels)))

    @property
    def eval_split(self) -> str:
        return "val" if self.val_images is not None else "test"

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.val_images is not None:
            return self.val_images, self.val_labels
        return self.test_images, self.test_labels


def _check_limit(name: str, value: int | None, available: int) -> None:
    if value is not None and value <= 0:
        raise LocalconvError(f"{name} must be a positive number of images, got {value}")
    if value is not None and value > available:
        raise LocalconvError(f"{name} {value} is more than the {available} images available")


def split_indices(n: int, val_split: int = 0, limit_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) positions among ``n`` training images, as :func:`select_splits` picks them."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    val_idx, train_idx = perm[:val_split], perm[val_split:]
    return (train_idx if limit_train is None else train_idx[:limit_train]), val_idx


def take(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels at positions ``idx``, in position order, as tensors."""
    idx = np.sort(idx)
    return (torch.from_numpy(np.ascontiguousarray(images[idx])),
            torch.from_numpy(np.asarray(labels[idx], dtype=np.int64)))


def select_splits(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                  test_labels: np.ndarray, limit_train: int | None = None, val_split: int = 0,
                  limit_test: int | None = None) -> Splits:
    """Hold out ``val_split`` training images for validation, then keep ``limit_train`` of the rest."""
    n = len(train_labels)
    if val_split < 0:
        raise LocalconvError(f"--val-split must be >= 0, got {val_split}")
    if val_split >= n:
        raise LocalconvError(f"--val-split {val_split} leaves no training images (the set has {n})")
    _check_limit("--limit-train", limit_train, n - val_split)
    _check_limit("--limit-test", limit_test, len(test_labels))
    train_idx, val_idx = split_indices(n, val_split, limit_train)
    test_idx = np.arange(len(test_labels))
    if limit_test is not None:
        test_idx = np.random.default_rng(SPLIT_SEED + 1).permutation(len(test_labels))[:limit_test]

    tx, ty = take(train_images, train_labels, train_idx)
    vx, vy = take(train_images, train_labels, val_idx) if val_split else (None, None)
    sx, sy = take(test_images, test_labels, test_idx)
    return Splits(tx, ty, vx, vy, sx, sy)


def pixel_mean(images: torch.Tensor, chunk: int = 10000) -> torch.Tensor:
    """Per-pixel mean [3, 32, 32] (float32, 0..255) of uint8 images, accumulated in float64."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64, device=images.device)
    for start in range(0, images.shape[0], chunk):
        total += images[start:start + chunk].double().sum(0)
    return (total / max(1, images.shape[0])).float()
