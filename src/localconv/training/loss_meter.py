"""Running sums of the two reported losses (``loss/total``, ``loss/cross_entropy``) during an epoch.

The training loop adds each step's detached pair on the device (no host synchronization); the host reads
means only when it writes a record: the epoch's mean, and the mean since the previous step-level record
(a step record is then the average of the steps it stands for, not one noisy batch).
"""
from __future__ import annotations

import torch

from ..metrics import LOSS_KEYS


class LossMeter:
    """Sums of ``[loss/total, loss/cross_entropy]`` over the finite steps of the current epoch."""

    def __init__(self, device: torch.device) -> None:
        self.sum = torch.zeros(len(LOSS_KEYS), device=device)
        self.count = 0
        self._mark_sum = self.sum.clone()
        self._mark_count = 0

    def start_epoch(self) -> None:
        self.sum.zero_()
        self.count = 0
        self._mark_sum.zero_()
        self._mark_count = 0

    def add(self, terms: torch.Tensor) -> None:
        """One finite step's pair (skipped, non-finite steps are not added)."""
        self.sum += terms
        self.count += 1

    def copy_from(self, sums: torch.Tensor, count: int) -> None:
        """Take the sums kept elsewhere (the fused step keeps its own on the device)."""
        self.sum.copy_(sums)
        self.count = count

    def interval_means(self) -> dict[str, float]:
        """Means since the previous call (or the epoch start); empty when no finite step came since."""
        n = self.count - self._mark_count
        if n <= 0:
            return {}
        means = ((self.sum - self._mark_sum) / n).tolist()
        self._mark_sum.copy_(self.sum)
        self._mark_count = self.count
        return dict(zip(LOSS_KEYS, means))

    def epoch_means(self) -> list[float]:
        """``[loss/total, loss/cross_entropy]`` averaged over the epoch's finite steps so far."""
        return (self.sum / max(1, self.count)).tolist()
