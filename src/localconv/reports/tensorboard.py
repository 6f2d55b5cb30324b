"""``localconv train --tensorboard``: scalars and per-layer histograms for TensorBoard.

Every ``every`` steps :class:`TensorBoardCallback` writes

* scalars ``train/loss`` (cross-entropy), ``train/lr``, ``train/images_per_s`` and, per weight layer,
  ``layers/<layer>/{act_mean,act_std,signal,dead_frac,grad_norm,update_ratio}``;
* histograms ``weights/<param>``, ``gradients/<param>``, ``activations/<layer>`` and
  ``activation_grads/<layer>``;

and at each epoch end ``epoch/{loss,accuracy,images_per_s,lr}``. Non-finite values never reach
the writer (its histogram code rejects them): they are counted, written as ``nonfinite/<tag>``
scalars, left out of the histogram, and reported at the end of the run.

TensorBoard is imported only when this callback starts, so the rest of localconv works
without the ``tensorboard`` package.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..diagnostics.monitor import LayerMonitor
from ..errors import LocalconvError
from ..training.engine import Callback

if TYPE_CHECKING:
    from ..training.engine import Trainer


def open_writer(log_dir: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir`` (one-line error without tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LocalconvError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardCallback(Callback):
    """Write TensorBoard scalars and histograms every ``every`` steps (see module doc)."""

    def __init__(self, log_dir: str | Path | None = None, every: int = 100,
                 histograms: bool = True) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None  # None: the run folder
        self.histograms = histograms
        self.monitor = LayerMonitor(every=every, keep_tensors=histograms)
        self.writer: Any = None
        self.nonfinite: dict[str, int] = {}  # tag -> non-finite values left out
        self._samples = 0
        self._clock: tuple[float, int] | None = None  # (time, images trained) at the last write
        self._images = 0

    # ---------------------------------------------------------------- writing
    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            self._count_nonfinite(tag, 1, step)
            return
        self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, tensor: torch.Tensor, step: int) -> None:
        values = tensor.detach().float().flatten().cpu()
        finite = torch.isfinite(values)
        bad = int(values.numel() - finite.sum())
        if bad:
            self._count_nonfinite(tag, bad, step)
            values = values[finite]
        if values.numel():
            self.writer.add_histogram(tag, values.numpy(), step)

    def _count_nonfinite(self, tag: str, count: int, step: int) -> None:
        self.nonfinite[tag] = self.nonfinite.get(tag, 0) + count
        self.writer.add_scalar(f"nonfinite/{tag}", float(count), step)

    # -------------------------------------------------------------- callbacks
    def on_train_start(self, trainer: "Trainer") -> None:
        self.writer = open_writer(self.log_dir or trainer.run_dir)
        self.monitor.on_train_start(trainer)
        self._clock = (time.perf_counter(), self._images)

    def after_backward(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        self.monitor.after_backward(trainer, loss)

    def after_step(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        self.monitor.after_step(trainer, loss)
        self._images += trainer.batch_size
        history = self.monitor.history
        samples = self.monitor.samples
        if samples == self._samples:
            return
        self._samples = samples
        index = self.monitor.step - 1  # the step just observed; TensorBoard's x axis counts steps done
        step = index + 1
        self.scalar("train/loss", history.losses[-1][1] if history.losses else None, step)
        self.scalar("train/lr", trainer.optimizer.param_groups[0]["lr"], step)
        now = time.perf_counter()
        if self._clock is not None and now > self._clock[0] and self._images > self._clock[1]:
            self.scalar("train/images_per_s", (self._images - self._clock[1]) / (now - self._clock[0]), step)
        self._clock = (now, self._images)
        for name in history.layers:
            s = history.stats[name][-1]
            if s.step != index:
                continue
            act_std = math.sqrt(max(0.0, s.act_rms ** 2 - s.act_mean ** 2)) if math.isfinite(s.act_rms) else s.act_rms
            for key, value in (("act_mean", s.act_mean), ("act_std", act_std), ("signal", s.signal),
                               ("dead_frac", s.dead_frac), ("grad_norm", s.grad_out),
                               ("update_ratio", s.update_ratio)):
                self.scalar(f"layers/{name}/{key}", value, step)
        if self.histograms:
            self._write_histograms(trainer, step)
        self.writer.flush()

    def _write_histograms(self, trainer: "Trainer", step: int) -> None:
        for pname, p in trainer.model.named_parameters():
            self.histogram(f"weights/{pname}", p, step)
            if p.grad is not None:
                self.histogram(f"gradients/{pname}", p.grad, step)
        for name, kept in self.monitor.last_tensors.items():
            self.histogram(f"activations/{name}", kept["activation"], step)
            if "activation_grad" in kept:
                self.histogram(f"activation_grads/{name}", kept["activation_grad"], step)
        self.monitor.last_tensors.clear()

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key in ("loss", "accuracy", "images_per_s", "lr"):
            if key in record:
                self.scalar(f"epoch/{key}", record[key], step)
        self.writer.flush()

    def on_train_end(self, trainer: "Trainer") -> None:  # noqa: ARG002
        self.close()

    def close(self) -> None:
        self.monitor.detach()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            if self.nonfinite:
                total = sum(self.nonfinite.values())
                worst = max(self.nonfinite, key=self.nonfinite.get)
                print(f"tensorboard: {total} non-finite values were left out of the logs (most in {worst}); "
                      "see the nonfinite/* scalars", file=sys.stderr)
            self.writer = None
