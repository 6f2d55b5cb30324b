"""``localconv compare``: several runs side by side, as one table, PNG plots and a Markdown/HTML report.

Per run: model, parameters, size of fp32 weights with their moving-average copy, multiply-adds per
image (both from :mod:`localconv.reports.summary`), training time, images/s, best and final accuracy.
Plots: loss and accuracy against epoch and against wall time, best accuracy against parameters.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, LocalconvError
from .plots import Curve, plot_accuracy_vs_params, plot_curves

PLOTS = {"epoch": "curves_epoch.png", "time": "curves_time.png", "params": "accuracy_vs_params.png"}


@dataclass
class RunRecord:
    """What compare needs from one run folder."""

    name: str
    path: Path
    meta: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl epoch records
    steps: list[dict[str, Any]] = field(default_factory=list)   # metrics.jsonl step records

    @property
    def model_name(self) -> str:
        spec = self.meta.get("model", {})
        if spec.get("name"):
            return str(spec["name"])
        return Path(str(spec.get("cfg", {}).get("layers_name", "cfg"))).name

    def wall_at(self, epochs: np.ndarray) -> np.ndarray:
        """Wall time (training + evaluation seconds) at fractional epochs, interpolated between epoch ends."""
        ends = [(0.0, 0.0)] + [(float(r["epoch"]), float(r["wall_s"])) for r in self.epochs if "wall_s" in r]
        xs, ys = zip(*ends)
        return np.interp(epochs, xs, ys)


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    epochs, steps = [], []
    file = path / "metrics.jsonl"
    if not file.is_file():
        return epochs, steps
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CheckpointError(f"{file}:{number}: not a JSON line") from None
        _check_record(record, f"{file}:{number}")  # every input is validated before any file is written
        if record.get("kind") == "epoch":
            epochs.append(record)
        elif record.get("kind") == "step":
            steps.append(record)
    return epochs, steps


_NUMBER_FIELDS = ("epoch", "step", "wall_s", "accuracy", "lr", "images_per_s")


def _check_record(record: Any, where: str) -> None:
    """A metrics.jsonl record: an object whose numeric fields (and every loss) are numbers (NaN allowed)."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    if record.get("kind") in ("epoch", "step") and "epoch" not in record:  # every curve is drawn against it
        raise CheckpointError(f"{where}: field 'epoch': missing in a {record['kind']} record")
    for key, value in record.items():
        if (key in _NUMBER_FIELDS or key.startswith("loss")) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(f"{where}: field {key!r}: expected a number, got {json.dumps(value)[:40]}")


def load_runs(paths: list[Path]) -> list[RunRecord]:
    """Read each run folder (its run.json and metrics.jsonl); names are the folder names, made unique."""
    from ..training.checkpoint import read_meta

    if not paths:
        raise LocalconvError("compare: give at least one run folder")
    runs = []
    for path in paths:
        meta = read_meta(path)
        epochs, steps = _read_metrics(Path(path))
        runs.append(RunRecord(Path(path).name or str(path), Path(path), meta, epochs, steps))
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = str(r.path)
    return runs


def _model_totals(run: RunRecord) -> dict[str, Any]:
    """Parameters, multiply-adds and fp32 sizes of the run's model (rebuilt from its spec, no weights)."""
    from ..models.registry import build_model_from_spec
    from .summary import summarize

    try:
        model = build_model_from_spec(run.meta["model"])
    except (KeyError, LocalconvError) as exc:
        raise CheckpointError(f"{run.path / 'run.json'}: cannot rebuild the model ({exc})") from None
    totals = summarize(model, run.model_name).totals
    return {"params": totals.params, "multiply_adds": totals.multiply_adds, "bytes_fp32": totals.bytes_fp32,
            "bytes_fp32_with_ema": totals.bytes_fp32_with_ema}


def compare_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One dict per run with the table's columns (raw numbers)."""
    rows = []
    for run in runs:
        m = run.meta
        rates = [float(r["images_per_s"]) for r in run.epochs if r.get("images_per_s")]
        row = {"run": run.name, "model": run.model_name, **_model_totals(run),
               "epochs": m.get("epoch"), "train_time_s": m.get("train_time_s"),
               "images_per_s": float(np.median(rates)) if rates else None,
               "best_accuracy": m.get("best_accuracy"), "final_accuracy": m.get("last_accuracy"),
               "eval_split": m.get("eval_split"), "device": m.get("device"), "path": str(run.path)}
        rows.append(row)
    return rows


COLUMNS = [("run", "run"), ("model", "model"), ("params", "params"), ("size", "size fp32+EMA"),
           ("macs", "mult-adds"), ("epochs", "epochs"), ("time", "train time"), ("rate", "images/s"),
           ("best", "best acc"), ("final", "final acc")]


def _cells(row: dict[str, Any]) -> dict[str, str]:
    def acc(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    t = row["train_time_s"]
    return {
        "run": row["run"], "model": row["model"], "params": f"{row['params']:,}",
        "size": f"{row['bytes_fp32_with_ema'] / 1e6:.1f} MB", "macs": f"{row['multiply_adds'] / 1e6:.1f}M",
        "epochs": "-" if row["epochs"] is None else f"{row['epochs']:g}",
        "time": "-" if t is None else (f"{t:.0f} s" if t < 600 else f"{t / 60:.1f} min"),
        "rate": "-" if row["images_per_s"] is None else f"{row['images_per_s']:,.0f}",
        "best": acc(row["best_accuracy"]), "final": acc(row["final_accuracy"]),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned text table (numbers right-aligned)."""
    cells = [_cells(r) for r in rows]
    widths = {k: max(len(title), *(len(c[k]) for c in cells)) for k, title in COLUMNS}
    left = {"run", "model"}

    def line(values: dict[str, str]) -> str:
        return "  ".join(values[k].ljust(widths[k]) if k in left else values[k].rjust(widths[k])
                         for k, _ in COLUMNS).rstrip()

    split = {r["eval_split"] for r in rows if r.get("eval_split")}
    lines = [line({k: t for k, t in COLUMNS}), "  ".join("-" * widths[k] for k, _ in COLUMNS)]
    lines += [line(c) for c in cells]
    if split:
        lines.append(f"(accuracy on the {' / '.join(sorted(split))} split; mult-adds per image, forward)")
    return "\n".join(lines)


def curves(runs: list[RunRecord], x: str) -> list[Curve]:
    """Loss (step records or epoch means, whichever has more points) and accuracy per run against epoch
    or wall time."""
    out = []
    for run in runs:
        loss_src = run.steps if len(run.steps) > len(run.epochs) else run.epochs
        loss_epochs = np.array([float(r["epoch"]) for r in loss_src if "loss" in r])
        loss = [float(r["loss"]) for r in loss_src if "loss" in r]
        acc_records = [r for r in run.epochs if r.get("accuracy") is not None]
        acc_epochs = np.array([float(r["epoch"]) for r in acc_records])
        acc = [float(r["accuracy"]) for r in acc_records]
        if x == "time":
            loss_x, acc_x = run.wall_at(loss_epochs), run.wall_at(acc_epochs)
        else:
            loss_x, acc_x = loss_epochs, acc_epochs
        out.append(Curve(run.name, list(map(float, loss_x)), loss, list(map(float, acc_x)), acc))
    return out


def write_plots(runs: list[RunRecord], rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    return {
        "epoch": plot_curves(curves(runs, "epoch"), out_dir / PLOTS["epoch"], "epoch", "loss and accuracy by epoch"),
        "time": plot_curves(curves(runs, "time"), out_dir / PLOTS["time"], "wall time (s)",
                            "loss and accuracy by training time"),
        "params": plot_accuracy_vs_params([r["run"] for r in rows], [r["params"] for r in rows],
                                          [r["best_accuracy"] for r in rows], out_dir / PLOTS["params"]),
    }


def markdown_report(rows: list[dict[str, Any]], plots: dict[str, Path], title: str) -> str:
    cells = [_cells(r) for r in rows]
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |"
    rule = "|" + "|".join("---" if k in ("run", "model") else "---:" for k, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(c[k] for k, _ in COLUMNS) + " |" for c in cells]
    figures = [f"![{name}]({path.name})" for name, path in plots.items()]
    return "\n".join([f"# {title}", "", head, rule, *body, "", *figures, ""])


def html_report(rows: list[dict[str, Any]], plots: dict[str, Path], title: str) -> str:
    cells = [_cells(r) for r in rows]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c[k])}</td>" for k, _ in COLUMNS) + "</tr>" for c in cells)
    figures = "".join(f'<p><img src="{html.escape(p.name)}" alt="{html.escape(n)}"></p>' for n, p in plots.items())
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+2){text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table><tr>{head}</tr>{body}</table>{figures}</body></html>\n")


def write_report(runs: list[RunRecord], rows: list[dict[str, Any]], out_dir: Path, fmt: str = "md",
                 title: str = "localconv runs") -> Path:
    """Plots plus ``report.md`` / ``report.html`` (and ``compare.json``) in ``out_dir``; returns the report.
    ``rows``: :func:`compare_rows` of ``runs``."""
    if fmt not in ("md", "html"):
        raise LocalconvError(f"--format must be md or html, got {fmt!r}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalconvError(f"--out {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    plots = write_plots(runs, rows, out_dir)
    text = markdown_report(rows, plots, title) if fmt == "md" else html_report(rows, plots, title)
    report = out_dir / f"report.{fmt}"
    report.write_text(text)
    (out_dir / "compare.json").write_text(json.dumps(rows, indent=1))
    return report
