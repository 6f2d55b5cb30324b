"""PNG plots with matplotlib's object API and the Agg canvas (no pyplot, no global backend change).

``plot_curves``              losses and accuracy of several runs against epoch or wall time
``plot_accuracy_vs_params``  best accuracy of several runs against their parameter count
``plot_confusion``           a confusion matrix (``localconv eval --confusion x.png``)
``plot_reliability``         a reliability diagram (``localconv eval --reliability x.png``)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalconvError


@dataclass
class Curve:
    """One run's series: x values per metric (epochs or seconds) and the metric values. ``loss`` is the
    training ``loss/cross_entropy``, ``total`` the ``loss/total`` (with the weight-decay terms);
    ``acc_label`` names the run and its evaluation split."""

    label: str
    loss_x: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    acc_x: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    total_x: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    acc_label: str = ""


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _percent() -> Any:
    """Accuracy axes in percent, like every table (localconv.metrics.format_accuracy)."""
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LocalconvError(f"{path}: plots are written as PNG; use a .png file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    except OSError as exc:
        raise LocalconvError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def plot_curves(curves: Sequence[Curve], path: str | Path, xlabel: str = "epoch", title: str = "") -> Path:
    """Three panels side by side against ``xlabel``: the training cross-entropy (comparable between models),
    the training total loss (with each model's weight-decay terms) and the evaluation accuracy of each run
    (its split in the legend)."""
    fig = _figure(14, 4)
    ax_ce, ax_total, ax_acc = fig.subplots(1, 3)
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        if c.loss:
            ax_ce.plot(c.loss_x, c.loss, color=color, label=c.label, linewidth=1.5)
        if c.total:
            ax_total.plot(c.total_x, c.total, color=color, label=c.label, linewidth=1.5)
        if c.acc:
            ax_acc.plot(c.acc_x, c.acc, color=color, label=c.acc_label or c.label, marker="o", markersize=3,
                        linewidth=1.5)
    ax_ce.set_ylabel("training loss/cross_entropy")
    ax_total.set_ylabel("training loss/total (with weight decay)")
    ax_acc.set_ylabel("accuracy (eval split in the legend)")
    ax_acc.yaxis.set_major_formatter(_percent())
    missing = [c.label for c in curves if c.total and not c.loss]
    if missing:  # metrics.jsonl written before loss/cross_entropy existed
        ax_ce.set_title("not logged by: " + ", ".join(missing), fontsize="small")
    for ax, has in ((ax_ce, any(c.loss for c in curves)), (ax_total, any(c.total for c in curves)),
                    (ax_acc, any(c.acc for c in curves))):
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if has:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_vs_params(labels: Sequence[str], params: Sequence[int], accuracy: Sequence[float | None],
                            path: str | Path, title: str = "best accuracy vs parameters") -> Path:
    """A labelled scatter plot, parameters on a log axis."""
    fig = _figure(6, 4.5)
    ax = fig.subplots()
    for i, (label, n, acc) in enumerate(zip(labels, params, accuracy)):
        if acc is None:
            continue
        ax.scatter([n], [acc], color=f"C{i % 10}", s=40, zorder=3)
        ax.annotate(label, (n, acc), textcoords="offset points", xytext=(6, 4), fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("best accuracy (eval split in the label)")
    ax.yaxis.set_major_formatter(_percent())
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.25, y=0.2)
    ax.set_title(title)
    return _save(fig, path)


def plot_confusion(confusion: Any, classes: Sequence[str], path: str | Path, title: str = "confusion matrix") -> Path:
    """Rows: true class, columns: predicted; cells show counts, colour the row-normalized rate."""
    cm = np.asarray(confusion.tolist() if hasattr(confusion, "tolist") else confusion, dtype=np.int64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    fig = _figure(1.0 + 0.6 * k, 0.6 + 0.6 * k)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(k), labels=list(classes), fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize="x-small",
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(title)
    return _save(fig, path)


def plot_reliability(bins: Sequence[dict[str, float]], path: str | Path, ece: float | None = None,
                     title: str = "reliability diagram") -> Path:
    """Accuracy per confidence bin (bars) and the bin's mean confidence (red) against the diagonal of
    perfect calibration, with the share of images per bin below."""
    fig = _figure(5, 5.5)
    ax, ax_count = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    lo = np.array([b["lo"] for b in bins])
    width = np.array([b["hi"] - b["lo"] for b in bins])
    counts = np.array([b["count"] for b in bins], dtype=float)
    acc = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins])
    conf = np.array([b["confidence"] if b["count"] else 0.0 for b in bins])
    filled = counts > 0
    ax.bar(lo[filled], acc[filled], width=width[filled], align="edge", color="C0", edgecolor="white",
           label="accuracy")
    ax.hlines(conf[filled], lo[filled], lo[filled] + width[filled], color="C3", linewidth=2,
              label="mean confidence")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title + (f" (ECE {ece:.3f})" if ece is not None else ""))
    total = max(counts.sum(), 1.0)
    ax_count.bar(lo, counts / total, width=width, align="edge", color="C7", edgecolor="white")
    ax_count.set_xlabel("confidence (top probability)")
    ax_count.set_ylabel("share")
    return _save(fig, path)
