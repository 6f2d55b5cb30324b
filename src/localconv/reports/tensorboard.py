"""``localconv train --tensorboard``: scalars, per-layer histograms and input images for TensorBoard.

Every ``every`` steps (default 100, fewer in a short run so that it still gets about 20 points)
:class:`TensorBoardCallback` writes

* scalars ``loss/total`` and ``loss/cross_entropy`` (of that step; meanings in :mod:`localconv.metrics`),
  ``train/lr``, ``train/images_per_s`` and, per weight layer,
  ``layers/<layer>/{act_mean,act_std,signal,sparsity,dead_frac,grad_norm,update_ratio}``
  (``sparsity``: the fraction of the layer's activations that are exactly zero, the TF tutorial's
  ``<layer>/sparsity``);
* histograms ``weights/<param>``, ``gradients/<param>``, ``activations/<layer>`` and
  ``activation_grads/<layer>``;

at the start, images ``inputs/train_augmented`` (the first images of the first batch, as the network
sees them: cropped, flipped, photometric changes, each rescaled to its own min..max for display) and
``inputs/train_original`` (the same images unaugmented); and at each epoch end
``epoch/loss/{total,cross_entropy}``, ``epoch/accuracy/<split>`` (``val`` or ``test``),
``epoch/images_per_s`` and ``epoch/lr``. Non-finite values never reach the writer (its histogram code
rejects them): they are counted, written as ``nonfinite/<tag>`` scalars, left out of the histogram,
and reported at the end of the run.

TensorBoard is imported only when this callback starts, so the rest of localconv works
without the ``tensorboard`` package.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.augment import train_batch
from ..diagnostics.monitor import LayerMonitor
from ..errors import LocalconvError
from ..metrics import LOSS_KEYS, auto_interval
from ..training.callbacks import Callback

if TYPE_CHECKING:
    from ..training.engine import Trainer


def check_log_dir(log_dir: str | Path) -> None:
    """Refuse, in one line and before any work, a ``--tensorboard`` folder that cannot be made or written: a
    regular file, a path through a file, a folder without write permission or on a read-only file system."""
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise LocalconvError(f"--tensorboard {path} is a file, not a folder")
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise LocalconvError(f"--tensorboard {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # access() also reports a read-only file system to root
        raise LocalconvError(f"--tensorboard {path}: cannot write in {existing}")


def open_writer(log_dir: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir`` (one-line error without tensorboard, or when
    the folder cannot be made)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LocalconvError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    try:
        return SummaryWriter(log_dir=str(log_dir))
    except OSError as exc:  # the folder changed since check_log_dir, or another writer failed
        raise LocalconvError(f"--tensorboard {log_dir}: cannot write ({exc.strerror or exc})") from None


DEFAULT_EVERY = 100  # steps between writes in a long run
INPUT_IMAGES = 8     # images shown under inputs/*


class TensorBoardCallback(Callback):
    """Write TensorBoard scalars and histograms every ``every`` steps (see module doc); ``every`` None:
    :data:`DEFAULT_EVERY`, or fewer steps in a short run (about 20 points)."""

    def __init__(self, log_dir: str | Path | None = None, every: int | None = None,
                 histograms: bool = True) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None  # None: the run folder
        self.histograms = histograms
        self.every = every
        # the activations are kept at every write for the sparsity scalars, histograms or not
        self.monitor = LayerMonitor(every=every or DEFAULT_EVERY, keep_tensors=True)
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
        self.monitor.every = self.every or auto_interval(trainer.total_steps, cap=DEFAULT_EVERY)
        self.monitor.on_train_start(trainer)
        self._write_inputs(trainer)
        self._clock = (time.perf_counter(), self._images)

    def _write_inputs(self, trainer: "Trainer") -> None:
        """The first images of the epoch's first batch as the network sees them, and as they are."""
        images = trainer.splits.train_images
        epoch = trainer.state.step // trainer.steps_per_epoch
        spec = trainer.train_spec
        plan = trainer.draw_plan(images.shape[0], trainer.options.seed, epoch).batch(0, INPUT_IMAGES)
        plan = plan.to(images.device)
        mean = trainer.model.pixel_mean if trainer.model.needs_pixel_mean() else None
        with torch.no_grad():
            seen = train_batch(images[plan.order], plan, spec, mean).float().cpu()
        step = trainer.state.step
        self.writer.add_images("inputs/train_augmented", _display_range(seen), step, dataformats="NCHW")
        self.writer.add_images("inputs/train_original", images[plan.order].cpu(), step, dataformats="NCHW")

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
        if trainer.last_terms is not None:
            for key, value in zip(LOSS_KEYS, trainer.last_terms.tolist()):
                self.scalar(key, value, step)
        self.scalar("train/lr", trainer.optimizer.param_groups[0]["lr"], step)
        now = time.perf_counter()
        if self._clock is not None and now > self._clock[0] and self._images > self._clock[1]:
            self.scalar("train/images_per_s", (self._images - self._clock[1]) / (now - self._clock[0]), step)
        self._clock = (now, self._images)
        kept = self.monitor.last_tensors
        for name in history.layers:
            s = history.stats[name][-1]
            if s.step != index:
                continue
            act_std = math.sqrt(max(0.0, s.act_rms ** 2 - s.act_mean ** 2)) if math.isfinite(s.act_rms) else s.act_rms
            sparsity = float((kept[name]["activation"] == 0).float().mean()) if name in kept else None
            for key, value in (("act_mean", s.act_mean), ("act_std", act_std), ("signal", s.signal),
                               ("sparsity", sparsity), ("dead_frac", s.dead_frac), ("grad_norm", s.grad_out),
                               ("update_ratio", s.update_ratio)):
                self.scalar(f"layers/{name}/{key}", value, step)
        if self.histograms:
            self._write_histograms(trainer, step)
        kept.clear()
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

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key in (*LOSS_KEYS, "images_per_s", "lr"):
            if key in record:
                self.scalar(f"epoch/{key}", record[key], step)
        if record.get("accuracy") is not None:
            self.scalar(f"epoch/accuracy/{record.get('eval_split', 'test')}", record["accuracy"], step)
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


def _display_range(x: torch.Tensor) -> torch.Tensor:
    """Each image rescaled to [0, 1] by its own min and max (standardized inputs have no fixed range)."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
