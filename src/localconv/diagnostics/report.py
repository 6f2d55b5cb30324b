"""The doctor's report: findings, a per-layer table and a verdict (one type for every way of running it).

``localconv doctor``, :func:`localconv.diagnose` and :meth:`localconv.Watch.report` all return a
:class:`DoctorReport`. ``print(report)`` shows the table and the findings; ``report.to_dict()`` is JSON.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..metrics import format_accuracy
from .checks import Finding
from .monitor import LayerStats, MonitorHistory

COLUMNS_EXPLAINED = (
    "  (each cell: first -> last monitored step; '-': does not apply. act mean: mean activation after the "
    "nonlinearity; signal: how much the activations differ between images; dead: share of ReLU units silent for "
    "the whole batch; grad: size of the gradient reaching the activations; update/w: how much one optimizer "
    "step changes the weights, relative to their size; gain fwd: signal out / signal in; gain bwd: gradient "
    "passed down / gradient received (near 1 is healthy for both))")


@dataclass
class DoctorReport:
    """What a watched training run showed. ``ok``: no finding is an error; ``healthy``: no problem
    (error or warning) at all, ``localconv doctor``'s exit code 0."""

    model: str
    history: MonitorHistory
    findings: list[Finding]
    steps_run: int
    steps: int | None = None
    batch_size: int | None = None
    trained_with: str = ""           # "original recipe", "SGD(lr=0.01, momentum=0.9)"...
    accuracy: float | None = None    # on the held-out images
    stopped: str = ""                # why the run ended early ("" if it did not)
    held_out: int = 0

    @property
    def trained_on(self) -> int | None:
        return self.history.trained_on

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.is_problem]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

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
            "model": self.model, "ok": self.ok, "healthy": self.healthy, "exit_code": self.exit_code,
            "steps_run": self.steps_run, "steps": self.steps, "batch_size": self.batch_size,
            "trained_with": self.trained_with, "trained_on": self.trained_on, "held_out": self.held_out,
            "stopped": self.stopped, "accuracy": self.accuracy,
            "loss_start": losses[0] if losses else None, "loss_end": losses[-1] if losses else None,
            "findings": [f.to_dict() for f in self.findings],
            "layers": self.layer_summary(),
            "history": self.history.to_dict(),
        })

    def format(self) -> str:
        return format_report(self)

    def __str__(self) -> str:
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
    if a is None and b is None:
        return "-"
    if pct:
        return f"{100 * (a or 0):.0f}%->{100 * (b or 0):.0f}%"
    return f"{_num(a)}->{_num(b)}"


def format_report(report: DoctorReport) -> str:
    h = report.history
    of = f" of {report.steps}" if report.steps else ""
    batch = f" of {report.batch_size} images" if report.batch_size else ""
    how = f" ({report.trained_with})" if report.trained_with else ""
    lines = [f"localconv doctor: {report.model}, {report.steps_run}{of} steps{batch}{how}"]
    trained = f"{report.trained_on}" if report.trained_on is not None else "a stream of"
    held = (f"held out {report.held_out}" if report.held_out else
            "held out none (accuracy measured on each batch before training on it)" if h.unseen else "held out none")
    lines.append(f"trained on {trained} images, {held}")
    losses = [x for _, x in h.losses]
    if losses:
        k = max(1, min(10, len(losses) // 5))
        head, tail = sum(losses[:k]) / k, sum(losses[-k:]) / k
        acc = f", held-out accuracy {format_accuracy(report.accuracy)}" if report.accuracy is not None else ""
        lines.append(f"loss {head:.3f} -> {tail:.3f} (chance {math.log(h.num_classes):.3f}){acc}")
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
        lines.append(COLUMNS_EXPLAINED)
    lines.append("")
    lines.append(_verdict(report))
    for f in report.findings:
        lines.append(f"  [{f.severity}] {f.layer or 'model'}: {f.message}")
        lines.append(f"      fix: {f.fix}")
    return "\n".join(lines)


def _verdict(report: DoctorReport) -> str:
    h = report.history
    if report.healthy:
        return "verdict: healthy" + (" (notes below)" if report.findings else "")  # info findings only
    if all(f.kind == "too_little_data" for f in report.problems):
        return "verdict: could not judge (too little data), no problem seen otherwise"
    names = sorted({f.layer for f in report.problems if f.layer}, key=lambda n: h.layers.index(n)
                   if n in h.layers else len(h.layers))
    at = f" (layers: {', '.join(names)})" if names else ""
    n = len(report.problems)
    return f"verdict: {n} problem{'s' if n != 1 else ''} found{at}"
