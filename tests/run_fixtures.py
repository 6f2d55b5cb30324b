"""Tiny trained run folders for the tests of what a run is used for (export, --init-from, best checkpoint).

A run here is a real ``localconv train`` of a small model for a few steps on an image tree of random
CIFAR-style images (tests/cifar_fixtures.py): seconds on a CPU, and every file a real run has.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cifar_fixtures import CLASSES, make_arrays, write_image_tree
from localconv.cli.main import main

TINY_MODEL = "tf-tutorial-conv"  # 174,250 parameters: the smallest built-in model


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):  # noqa: ANN001, ANN201
    """Decoded-image caches of the module's runs go to a temporary folder, never ~/.cache (import this fixture
    into a test module to use it there)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCALCONV_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def image_tree(root: Path, classes: list[str] | None = None, n_train: int = 40, n_test: int = 20,
               seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` of random images."""
    return write_image_tree(root, make_arrays(n_train, n_test, classes or CLASSES, seed=seed))


def train_run(data: Path, out: Path, *extra: str, model: str = TINY_MODEL, epochs: str = "1",
              batch_size: str = "20") -> Path:
    """Train ``model`` on ``data`` into ``out`` with ``localconv train`` (CPU, no progress bar)."""
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", epochs, "--batch-size", batch_size,
            "--device", "cpu", "--no-progress", *extra]
    if "--cfg" not in extra:
        args[1:1] = ["--model", model]
    code = main(args)
    assert code == 0, f"localconv {' '.join(args)} exited {code}"
    return out
