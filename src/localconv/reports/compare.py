"""``localconv compare``: several runs side by side, as one table, PNG plots and a Markdown/HTML report.

Per run: what was trained (model, parameters, size of fp32 weights with their moving-average copy,
multiply-adds per image -- both from :mod:`localconv.reports.summary` --, training images, recipe, batch
size, peak learning rate, epochs) and what came out (training time, images/s, final ``loss/cross_entropy``,
the evaluation split with its size, best and final accuracy). Plots: the two losses (step-level points
where metrics.jsonl has them) and accuracy against epoch and against wall time, best accuracy against
parameters; every accuracy is labelled with its split. The HTML report embeds its plots (one
self-contained file); the Markdown report links the PNG files next to it.

Reads metrics.jsonl files of any localconv version: before ``loss/total`` and ``loss/cross_entropy``
existed, ``loss`` held the total (see :mod:`localconv.metrics`).
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, LocalconvError
from ..metrics import LOSS_CROSS_ENTROPY, LOSS_TOTAL, format_accuracy, read_loss
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


def _training_facts(run: RunRecord) -> dict[str, Any]:
    """Training-set size, recipe, batch size and peak learning rate (of the first parameter group, as
    logged; the run's --lr when nothing was logged)."""
    m = run.meta
    data = m.get("data") or {}
    options = m.get("options") or {}
    rates = [float(r["lr"]) for r in run.steps + run.epochs if r.get("lr") is not None]
    recipe = m.get("recipe")
    return {"train_images": data.get("n_train"),
            "recipe": (recipe.get("name") if isinstance(recipe, dict) else None) or options.get("recipe"),
            "batch_size": m.get("batch_size") or options.get("batch_size"),
            "lr": max(rates) if rates else options.get("lr")}


def _eval_images(meta: dict[str, Any]) -> int | None:
    data = meta.get("data") or {}
    return data.get("n_val") if meta.get("eval_split") == "val" else data.get("n_test")


def compare_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One dict per run with the table's columns (raw numbers)."""
    rows = []
    for run in runs:
        m = run.meta
        rates = [float(r["images_per_s"]) for r in run.epochs if r.get("images_per_s")]
        last = run.epochs[-1] if run.epochs else {}
        row = {"run": run.name, "model": run.model_name, **_model_totals(run), **_training_facts(run),
               "epochs": m.get("epoch"), "train_time_s": m.get("train_time_s"),
               "images_per_s": float(np.median(rates)) if rates else None,
               "final_cross_entropy": read_loss(last, LOSS_CROSS_ENTROPY),
               "final_total_loss": read_loss(last, LOSS_TOTAL),
               "eval_split": m.get("eval_split"), "eval_images": _eval_images(m),
               "best_accuracy": m.get("best_accuracy"), "final_accuracy": m.get("last_accuracy"),
               "device": m.get("device"), "path": str(run.path)}
        rows.append(row)
    return rows


COLUMNS = [("run", "run"), ("model", "model"), ("params", "params"), ("size", "size fp32+EMA"),
           ("macs", "mult-adds"), ("train", "train images"), ("recipe", "recipe"), ("batch", "batch"),
           ("lr", "peak lr"), ("epochs", "epochs"), ("time", "train time"), ("rate", "images/s"),
           ("ce", "final cross-entropy"), ("split", "eval split"), ("best", "best acc"), ("final", "final acc")]
LEFT = {"run", "model", "recipe", "split"}

NOTES = ("accuracy: precision@1 on each run's eval split (val: images held out of the training set, "
         "test: the test set), with its number of images; final cross-entropy: training loss/cross_entropy "
         "of the last epoch (the curves also show loss/total, which adds the weight-decay terms); peak lr: "
         "of the first parameter group; mult-adds per image, forward")


def _cells(row: dict[str, Any]) -> dict[str, str]:
    def number(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    t = row["train_time_s"]
    split = row.get("eval_split") or "-"
    if row.get("eval_images") is not None and split != "-":
        split = f"{split} ({row['eval_images']:,})"
    return {
        "run": row["run"], "model": row["model"], "params": f"{row['params']:,}",
        "size": f"{row['bytes_fp32_with_ema'] / 1e6:.1f} MB", "macs": f"{row['multiply_adds'] / 1e6:.1f}M",
        "train": number(row.get("train_images"), ","), "recipe": row.get("recipe") or "-",
        "batch": number(row.get("batch_size"), "d"), "lr": number(row.get("lr"), ".3g"),
        "epochs": number(row["epochs"], "g"),
        "time": "-" if t is None else (f"{t:.0f} s" if t < 600 else f"{t / 60:.1f} min"),
        "rate": number(row["images_per_s"], ",.0f"), "ce": number(row.get("final_cross_entropy"), ".4f"),
        "split": split, "best": format_accuracy(row["best_accuracy"]), "final": format_accuracy(row["final_accuracy"]),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned text table (numbers right-aligned)."""
    cells = [_cells(r) for r in rows]
    widths = {k: max(len(title), *(len(c[k]) for c in cells)) for k, title in COLUMNS}

    def line(values: dict[str, str]) -> str:
        return "  ".join(values[k].ljust(widths[k]) if k in LEFT else values[k].rjust(widths[k])
                         for k, _ in COLUMNS).rstrip()

    lines = [line({k: t for k, t in COLUMNS}), "  ".join("-" * widths[k] for k, _ in COLUMNS)]
    lines += [line(c) for c in cells]
    lines.append(f"({NOTES})")
    return "\n".join(lines)


def _split_label(run: RunRecord) -> str:
    split = run.meta.get("eval_split")
    n = _eval_images(run.meta)
    return "" if not split else f"{split}, {n:,} images" if n else split


def curves(runs: list[RunRecord], x: str) -> list[Curve]:
    """Both losses (step records or epoch means, whichever has more points) and accuracy per run against
    epoch or wall time."""
    out = []
    for run in runs:
        loss_src = run.steps if len(run.steps) > len(run.epochs) else run.epochs
        acc_records = [r for r in run.epochs if r.get("accuracy") is not None]
        series = {}
        for key in (LOSS_CROSS_ENTROPY, LOSS_TOTAL):
            points = [(float(r["epoch"]), read_loss(r, key)) for r in loss_src]
            series[key] = [(e, v) for e, v in points if v is not None]
        series["accuracy"] = [(float(r["epoch"]), float(r["accuracy"])) for r in acc_records]
        xs = {}
        for key, points in series.items():
            epochs = np.array([e for e, _ in points])
            xs[key] = list(map(float, run.wall_at(epochs) if x == "time" and len(epochs) else epochs))
        values = {key: [v for _, v in points] for key, points in series.items()}
        split = _split_label(run)
        out.append(Curve(run.name, xs[LOSS_CROSS_ENTROPY], values[LOSS_CROSS_ENTROPY], xs["accuracy"],
                         values["accuracy"], total_x=xs[LOSS_TOTAL], total=values[LOSS_TOTAL],
                         acc_label=f"{run.name} ({split})" if split else run.name))
    return out


def _splits_text(rows: list[dict[str, Any]]) -> str:
    splits = sorted({r["eval_split"] for r in rows if r.get("eval_split")})
    return " / ".join(splits) if splits else "unknown"


def write_plots(runs: list[RunRecord], rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    split = _splits_text(rows)
    return {
        "epoch": plot_curves(curves(runs, "epoch"), out_dir / PLOTS["epoch"], "epoch",
                             f"loss and accuracy ({split} split) by epoch"),
        "time": plot_curves(curves(runs, "time"), out_dir / PLOTS["time"], "wall time (s)",
                            f"loss and accuracy ({split} split) by training time"),
        "params": plot_accuracy_vs_params([f"{r['run']} ({r['eval_split']})" if r.get("eval_split") else r["run"]
                                           for r in rows], [r["params"] for r in rows],
                                          [r["best_accuracy"] for r in rows], out_dir / PLOTS["params"],
                                          title=f"best accuracy ({split} split) vs parameters"),
    }


def markdown_report(rows: list[dict[str, Any]], plots: dict[str, Path], title: str) -> str:
    cells = [_cells(r) for r in rows]
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |"
    rule = "|" + "|".join("---" if k in LEFT else "---:" for k, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(c[k] for k, _ in COLUMNS) + " |" for c in cells]
    figures = [f"![{name}]({path.name})" for name, path in plots.items()]
    return "\n".join([f"# {title}", "", head, rule, *body, "", f"*{NOTES[0].upper()}{NOTES[1:]}.*", "",
                      *figures, ""])


def _data_uri(path: Path) -> str:
    """The PNG as a data URI, so that the HTML report is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_report(rows: list[dict[str, Any]], plots: dict[str, Path], title: str) -> str:
    cells = [_cells(r) for r in rows]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(f'<td class="{"l" if k in LEFT else "r"}">{html.escape(c[k])}</td>'
                                    for k, _ in COLUMNS) + "</tr>" for c in cells)
    figures = "".join(f'<p><img src="{_data_uri(p)}" alt="{html.escape(n)}"></p>' for n, p in plots.items())
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}td.r{text-align:right}td.l{text-align:left}"
             "p.notes{color:#555;font-size:90%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table><tr>{head}</tr>{body}</table><p class='notes'>{html.escape(NOTES)}.</p>"
            f"{figures}</body></html>\n")


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
