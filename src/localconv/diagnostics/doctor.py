"""``localconv doctor``: a short, watched training run and a verdict per layer.

:func:`run_doctor` trains a model briefly with its own learning parameters (the ``original``
recipe by default) on a subset of the training images, with a :class:`LayerMonitor` on every
weight layer, then runs the checks of :mod:`localconv.diagnostics.checks` on what it saw.
The report (:class:`DoctorReport`) prints as a per-layer table (start -> end of the run) followed
by the findings, or serializes to JSON.
"""
from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalconvError
from ..metrics import format_accuracy
from ..models.base import Classifier
from .checks import Finding, run_checks
from .monitor import LayerMonitor, LayerStats, MonitorHistory
from .options import DoctorOptions


@dataclass
class DoctorReport:
    model: str
    options: DoctorOptions
    history: MonitorHistory
    findings: list[Finding]
    steps_run: int
    accuracy: float | None = None
    stopped: str = ""              # why the run ended early ("" if it did not)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.is_problem]

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def layer_summary(self) -> dict[str, dict[str, Any]]:
        """Per layer: the first and last monitored statistics."""
        return {name: {"start": self.history.stats[name][0].to_dict(), "end": self.history.stats[name][-1].to_dict()}
                for name in self.history.layers if self.history.stats.get(name)}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON; non-finite numbers (a gain of a dead layer, a NaN loss) become None."""
        losses = [x for _, x in self.history.losses]
        return _finite_or_none({
            "model": self.model, "healthy": self.healthy, "exit_code": self.exit_code,
            "steps_run": self.steps_run, "steps": self.options.steps, "batch_size": self.options.batch_size,
            "stopped": self.stopped, "accuracy": self.accuracy,
            "loss_start": losses[0] if losses else None, "loss_end": losses[-1] if losses else None,
            "findings": [f.to_dict() for f in self.findings],
            "layers": self.layer_summary(),
            "history": self.history.to_dict(),
        })

    def format(self) -> str:
        return format_report(self)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    return "0" if x == 0 else f"{x:.2g}" if 1e-2 <= abs(x) < 1e3 else f"{x:.1e}"


def _moved(a: float | None, b: float | None, pct: bool = False) -> str:
    if pct:
        return "-" if a is None else f"{100 * a:.0f}%->{100 * b:.0f}%"
    return f"{_num(a)}->{_num(b)}"


def format_report(report: DoctorReport) -> str:
    h = report.history
    lines = [f"localconv doctor: {report.model}, {report.steps_run} of {report.options.steps} steps of "
             f"{report.options.batch_size} images ({report.options.recipe} recipe)"]
    losses = [x for _, x in h.losses]
    if losses:
        k = max(1, min(10, len(losses) // 5))
        head, tail = np.mean(losses[:k]), np.mean(losses[-k:])
        acc = f", held-out accuracy {format_accuracy(report.accuracy)}" if report.accuracy is not None else ""
        lines.append(f"cross-entropy {head:.3f} -> {tail:.3f} (chance {math.log(h.num_classes):.3f}){acc}")
    if report.stopped:
        lines.append(f"stopped early: {report.stopped}")
    header = ("layer", "act mean", "signal", "dead", "grad", "update/w", "gain fwd", "gain bwd")
    rows = [header]
    for name in h.layers:
        stats: list[LayerStats] = h.stats.get(name, [])
        if not stats:
            continue
        a, b = stats[0], stats[-1]
        rows.append((name, _moved(a.act_mean, b.act_mean), _moved(a.signal, b.signal),
                     _moved(a.dead_frac, b.dead_frac, pct=True), _moved(a.grad_out, b.grad_out),
                     _moved(a.update_ratio, b.update_ratio), _moved(a.forward_gain, b.forward_gain),
                     _moved(a.backward_gain, b.backward_gain)))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines.append("")
        steps = h.monitored_steps
        lines.append(f"per layer, first -> last monitored step (steps {steps[0]}..{steps[-1]}):" if steps
                     else "per layer:")
        for r in rows:
            cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            lines.append("  " + "  ".join(cells))
        lines.append("  (signal: spread of the activations between images; grad: gradient reaching the activations; "
                     "gains: signal out/in, gradient in/out)")
    lines.append("")
    if report.healthy:
        lines.append("verdict: healthy" + (" (notes below)" if report.findings else ""))  # info findings only
    else:
        names = sorted({f.layer for f in report.problems if f.layer}, key=lambda n: h.layers.index(n)
                       if n in h.layers else len(h.layers))
        at = f" (layers: {', '.join(names)})" if names else ""
        lines.append(f"verdict: {len(report.problems)} problem{'s' if len(report.problems) != 1 else ''} found{at}")
    for f in report.findings:
        lines.append(f"  [{f.severity}] {f.layer or 'model'}: {f.message}")
        lines.append(f"      fix: {f.fix}")
    return "\n".join(lines)


@contextlib.contextmanager
def _cpu_threads(threads: int) -> Iterator[None]:
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


def doctor_split(n: int, options: DoctorOptions) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) positions of the images a doctor run uses among ``n`` training images."""
    from ..data.loader import split_indices

    val = min(options.val_images, max(0, n - options.batch_size))
    limit = min(options.limit_train, n - val)
    if limit < options.batch_size:
        raise LocalconvError(f"--batch-size {options.batch_size} is larger than the {limit} training images available")
    return split_indices(n, val, limit)


def doctor_images(n: int, options: DoctorOptions) -> np.ndarray:
    """Sorted positions of every training image a doctor run uses among ``n``: what to decode
    (``load_training_subset(lambda n: doctor_images(n, options), ...)``)."""
    return np.union1d(*doctor_split(n, options))


def run_doctor(model: Classifier, train_images: np.ndarray, train_labels: np.ndarray,
               options: DoctorOptions | None = None, classes: list[str] | None = None,
               run_dir: str | Path | None = None, subset_of: int | None = None) -> DoctorReport:
    """Train ``model`` for ``options.steps`` steps under a :class:`LayerMonitor` and judge it.

    ``subset_of``: the arrays hold only the images ``doctor_images(subset_of, options)`` of a training set
    of ``subset_of`` images (a :class:`~localconv.data.TrainingSubset`); the run is the same as on all of them.
    """
    from ..data.loader import Splits, take
    from ..models.registry import model_spec
    from ..training.engine import NonFiniteLoss, Trainer, TrainOptions

    options = options or DoctorOptions()
    options.validate()
    train_idx, val_idx = doctor_split(len(train_labels) if subset_of is None else subset_of, options)
    if subset_of is not None:  # positions in the whole set -> rows of the arrays given
        held = doctor_images(subset_of, options)
        if len(held) != len(train_labels):
            raise LocalconvError(f"run_doctor: {len(train_labels)} images given, the doctor uses {len(held)} "
                                 f"of {subset_of}")
        train_idx, val_idx = np.searchsorted(held, train_idx), np.searchsorted(held, val_idx)
    tx, ty = take(train_images, train_labels, train_idx)
    vx, vy = take(train_images, train_labels, val_idx) if len(val_idx) else (None, None)
    # the engine requires a test split; unused (the held-out images come from train), except as the
    # evaluation set with --val-images 0
    splits = Splits(tx, ty, vx, vy, tx[:1].clone(), ty[:1].clone())
    steps_per_epoch = len(train_idx) // options.batch_size
    train_options = TrainOptions(
        recipe=options.recipe, epochs=options.steps / steps_per_epoch, batch_size=options.batch_size,
        lr=options.lr, lr_scale=options.lr_scale, seed=options.seed, device=options.device, amp=False,
        eval_every=0, checkpoint_every=10**9, progress=options.progress, log_every=0)
    monitor = LayerMonitor(every=options.every, dense_start=options.dense_start)
    spec = model_spec(model)
    name = spec.get("name") or Path(str(spec.get("cfg", {}).get("layers_name", "cfg model"))).name
    stopped = ""
    with tempfile.TemporaryDirectory(prefix="localconv-doctor-") as tmp, _cpu_threads(options.threads):
        trainer = Trainer(model, splits, run_dir or tmp, train_options, classes=classes, callbacks=[monitor])
        try:
            # the engine's epoch line would come before the report and repeat its accuracy: dropped (the
            # progress bar, with --progress, is on stderr)
            with contextlib.redirect_stdout(io.StringIO()):
                state = trainer.fit()
            accuracy = state.last_accuracy
        except NonFiniteLoss:  # the monitor recorded where; the engine's advice is about `train`
            event = monitor.history.nonfinite
            stopped = f"the loss became {event.loss} at step {event.step}" if event else "the loss became non-finite"
            accuracy = None
        finally:
            monitor.detach()
        steps_run = trainer.state.step
    findings = run_checks(monitor.history)
    return DoctorReport(name, options, monitor.history, findings, steps_run, accuracy, stopped)
