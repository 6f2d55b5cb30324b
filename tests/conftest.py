import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_JPEG = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def synthetic_cifar(n_train: int = 256, n_test: int = 64, seed: int = 0, classes: int = 10):
    """Learnable fake CIFAR: each class has its own mean colour and a stripe orientation, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, n)
        colours = np.linspace(30, 225, classes)
        img = rng.normal(0, 25, (n, 3, 32, 32))
        img[:, 0] += colours[labels][:, None, None]
        img[:, 1] += colours[::-1][labels][:, None, None]
        stripes = (np.arange(32) % 8 < 4) * 60.0
        vertical = (labels % 2 == 0)
        img[vertical, 2] += stripes[None, None, :]
        img[~vertical, 2] += stripes[None, :, None]
        return np.clip(img, 0, 255).astype(np.uint8), labels.astype(np.int64)

    tx, ty = make(n_train)
    sx, sy = make(n_test)
    return tx, ty, sx, sy


@pytest.fixture
def fake_cifar():
    return synthetic_cifar()


@pytest.fixture(scope="session")
def shared_jpeg() -> Path:
    if not (SHARED_JPEG / "train.tar.gz").exists():
        pytest.skip("shared JPEG CIFAR-10 copy not found")
    return SHARED_JPEG
