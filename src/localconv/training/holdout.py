"""cuda-convnet's methodology: which training images phase 1 holds out as its validation set.

The 11% network was trained on batches 1-4 with batch 5 (10,000 images) as the validation set for its first
phase; then batch 5 joined the training set (REFERENCE §3). This module picks that held-out set: the release's
own batch 5 when the training set is a CIFAR-10 release read whole, else a fixed, seeded, class-stratified
stand-in of the same share (a fifth of each class: 1,000 per class of CIFAR-10's 5,000). It depends only on the
labels, the data's description and :data:`HOLDOUT_SEED` -- never on the training seed or the device -- so every
run on the same data holds out the same images and a resumed run holds out what the interrupted one did.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

HOLDOUT_SEED = 20121101  # fixed: the held-out set must not depend on the training seed
BATCHES = 5  # CIFAR-10's training batches; batch 5 is the held-out one
RELEASES = ("CIFAR-10 python release", "CIFAR-10 binary release")  # data.releases labels (data.source prefix)
HOLDOUT_MODES = ("auto", "none")


@dataclass
class Holdout:
    """The training-set positions held out of phase 1 (sorted) and the rest."""

    held: torch.Tensor  # int64 [H], sorted
    kept: torch.Tensor  # int64 [N - H], sorted
    kind: str           # "batch 5" | "seeded stand-in"
    per_class: list[int]

    def record(self) -> dict[str, Any]:
        """What run.json says about it (the index digest lets two runs be checked for the same set)."""
        digest = hashlib.sha256(self.held.numpy().astype("<i8").tobytes()).hexdigest()[:16]
        return {"holdout": self.kind, "holdout_images": int(self.held.numel()), "holdout_per_class": self.per_class,
                "holdout_seed": HOLDOUT_SEED if self.kind == "seeded stand-in" else None,
                "holdout_sha256": digest, "phase1_train_images": int(self.kept.numel())}


def is_whole_release(data_info: dict[str, Any], n: int) -> bool:
    """A CIFAR-10 release whose training images were all taken, in file order (batches 1..5)."""
    args = data_info.get("args") or {}
    source = str(data_info.get("source") or "")
    return (source.startswith(RELEASES) and not args.get("limit_train") and not args.get("val_split")
            and n % BATCHES == 0 and n > 0)


def choose_holdout(labels: torch.Tensor, num_classes: int, data_info: dict[str, Any]) -> Holdout:
    """Batch 5 of a whole release, else a fifth of each class drawn with :data:`HOLDOUT_SEED`."""
    labels = labels.cpu()
    n = int(labels.numel())
    if is_whole_release(data_info, n):
        held = torch.arange(n - n // BATCHES, n)
        kind = "batch 5"
    else:
        rng = np.random.default_rng(HOLDOUT_SEED)  # numpy's streams are stable across versions (as loader.py's)
        by_class = labels.numpy()
        parts = [rng.permutation(np.flatnonzero(by_class == c))[:int((by_class == c).sum()) // BATCHES]
                 for c in range(num_classes)]
        held = torch.from_numpy(np.sort(np.concatenate(parts)).astype(np.int64))
        kind = "seeded stand-in"
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    per_class = torch.bincount(labels[held], minlength=num_classes).tolist()
    return Holdout(held, torch.nonzero(mask).flatten(), kind, per_class)
