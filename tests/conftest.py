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


@pytest.fixture(autouse=True)
def _float32_fast_recipe_on_every_cpu(monkeypatch, request):
    """In-process tests see a CPU without native bf16, so that the fast recipe's arithmetic (bf16 autocast on
    CPUs with AMX / AVX512-BF16, float32 elsewhere) does not depend on the machine running the suite; tests of
    the bf16 path ask for it (``--amp`` / ``amp=True``) or patch ``native_bf16`` themselves."""
    if "native_cpu_bf16" in request.keywords:
        return
    import localconv.training.engine as engine

    monkeypatch.setattr(engine, "native_bf16", lambda device: device.type == "cuda")
