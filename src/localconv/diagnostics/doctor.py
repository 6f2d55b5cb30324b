"""What ``localconv doctor`` trains on: the split of the training images into trained-on and held-out
ones, the images to decode, and the CPU threads of the run (numpy and torch only).

The run itself is :func:`localconv.diagnose` (:mod:`.diagnose`); for built-in and cfg models the command
gives it the model's recipe (:mod:`localconv.cli.doctor_recipe`). The report is :mod:`.report`'s.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from ..errors import LocalconvError
from .options import DoctorOptions
from .report import DoctorReport, format_report  # noqa: F401 (re-exported: the report's old home)


@contextlib.contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (0: left as they are) for the run, then restored
    (``localconv doctor`` picks one per idle core: see :mod:`.idle_cores`)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


HOLDOUT_SHARE = 5  # hold out at most 1 image in this many


def doctor_split(n: int, options: DoctorOptions) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) positions of the images a doctor run uses among ``n`` training images."""
    from ..data.loader import split_indices

    # an affordable share: a fifth of the images at most (1,000 images: 200 held out, 800 trained on)
    val = min(options.val_images, n // HOLDOUT_SHARE)
    limit = min(options.limit_train, n - val)
    if limit < options.batch_size:
        raise LocalconvError(f"--batch-size {options.batch_size} is larger than the {limit} training images available")
    return split_indices(n, val, limit)


def doctor_images(n: int, options: DoctorOptions) -> np.ndarray:
    """Sorted positions of every training image a doctor run uses among ``n``: what to decode
    (``load_training_subset(lambda n: doctor_images(n, options), ...)``)."""
    return np.union1d(*doctor_split(n, options))
