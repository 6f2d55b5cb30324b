"""Running sums of the two reported losses (``loss/total``, ``loss/cross_entropy``) during an epoch.

The training loop adds each step's detached pair on the device (no host synchronization); the host reads
means only when it writes a record: the epoch's mean, and the mean since the previous step-level record
(a step record is then the average of the steps it stands for, not one noisy batch).
"""
from __future__ import annotations

import math

import torch

from ..metrics import LOSS_KEYS


class LossMeter:
    """Sums of ``[loss/total, loss/cross_entropy]`` over the finite steps of the current epoch."""

    def __init__(self, device: torch.device) -> None:
        self.sum = torch.zeros(len(LOSS_KEYS), device=device)
        self.count = 0
        self._mark_sum = self.sum.clone()
        self._mark_count = 0
        self._carried = self.sum.clone()  # sums of the epoch's steps before a resume (see restore)
        self._carried_count = 0

    def start_epoch(self) -> None:
        self.sum.zero_()
        self.count = 0
        self._mark_sum.zero_()
        self._mark_count = 0
        self._carried.zero_()
        self._carried_count = 0

    def state(self) -> dict[str, list[float] | int] | None:
        """The epoch's sums so far, for a checkpoint written mid-epoch (None if not finite: not storable)."""
        sums, marks = self.sum.tolist(), self._mark_sum.tolist()
        if not all(math.isfinite(v) for v in sums + marks):
            return None
        return {"loss_sum": sums, "steps": self.count, "mark_loss_sum": marks, "mark_steps": self._mark_count}

    def restore(self, state: dict[str, list[float] | int]) -> None:
        """Continue an epoch from :meth:`state` (after :meth:`start_epoch`): its records then average all of the
        epoch's steps, those before the checkpoint too."""
        self.sum.copy_(torch.tensor(state["loss_sum"]))
        self._carried.copy_(self.sum)
        self._mark_sum.copy_(torch.tensor(state["mark_loss_sum"]))
        self.count = self._carried_count = int(state["steps"])  # type: ignore[arg-type]
        self._mark_count = int(state["mark_steps"])  # type: ignore[arg-type]

    def add(self, terms: torch.Tensor) -> None:
        """One finite step's pair (skipped, non-finite steps are not added)."""
        self.sum += terms
        self.count += 1

    def copy_from(self, sums: torch.Tensor, count: int) -> None:
        """Take the sums kept elsewhere (the fused step keeps its own on the device, from the resume on)."""
        torch.add(sums, self._carried, out=self.sum)
        self.count = count + self._carried_count

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
