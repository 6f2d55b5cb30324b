"""``localconv compare``: several runs side by side, as one table, PNG plots and a Markdown/HTML report.

Per run: what was trained (model with the options that change it, the data with its class count, the
seed, parameters, size of fp32 weights with their moving-average copy, multiply-adds per image -- both from
:mod:`localconv.reports.summary` --, training images, recipe, batch size, peak learning rate, epochs) and what
came out (training time, images/s, final ``loss/cross_entropy``, the evaluation split with its size, best and
final accuracy, the final one with a rough uncertainty from the evaluation set's size).

Comparisons that cannot mislead: notes above the table say when runs differ in data or evaluation split (their
accuracies do not compare), notes below it when two comparable runs differ by less than the uncertainty of
the difference, and give the mean and spread of runs that differ only in their seed.

Plots: the two losses (step-level points where metrics.jsonl has them) and accuracy against epoch and
against wall time, best accuracy against parameters; every accuracy is labelled with its split. The HTML
report embeds its plots (one self-contained file); the Markdown report links the PNG files next to it.

Reads metrics.jsonl files of any localconv version: before ``loss/total`` and ``loss/cross_entropy``
existed, ``loss`` held the total (see :mod:`localconv.metrics`).
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import textwrap
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
    text = file.read_text()
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                break  # a record still being appended by a run in training (or cut by a crash): not yet a record
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
        row = {"run": run.name, "model": run.model_name, "model_options": _model_options(m), **_data_facts(m),
               "seed": (m.get("options") or {}).get("seed"), **_model_totals(run), **_training_facts(run),
               "epochs": m.get("epoch"), "train_time_s": m.get("train_time_s"),
               "images_per_s": float(np.median(rates)) if rates else None,
               "final_cross_entropy": read_loss(last, LOSS_CROSS_ENTROPY),
               "final_total_loss": read_loss(last, LOSS_TOTAL),
               "eval_split": m.get("eval_split"), "eval_images": _eval_images(m),
               "best_accuracy": m.get("best_accuracy"), "final_accuracy": m.get("last_accuracy"),
               "device": m.get("device"), "path": str(run.path)}
        row["final_accuracy_uncertainty"] = accuracy_uncertainty(row["final_accuracy"], row["eval_images"])
        row.update(_progress_facts(run))
        row["configuration"] = _configuration(m)
        rows.append(row)
    _add_seed_groups(rows)
    return rows


def _progress_facts(run: RunRecord) -> dict[str, Any]:
    """``complete``: whether the run reached its end (None: a run.json that does not say); ``training``: whether
    a ``localconv train`` holds the folder now (its numbers are those of its last checkpoint)."""
    from ..training.run_lock import RunFolderBusy, RunLock

    try:
        RunLock(run.path).probe()
        training = False
    except RunFolderBusy:
        training = True
    complete = run.meta.get("complete")
    return {"complete": complete if isinstance(complete, bool) else None, "training": training,
            "planned_epochs": run.meta.get("epochs"), "stop_reason": run.meta.get("stop_reason") or None}


def _progress_note(rows: list[dict[str, Any]]) -> str | None:
    """A note naming the runs that have not reached their end: their last checkpoint is not a final result."""
    parts = []
    for r in rows:
        if not r.get("training") and r.get("complete") is not False:
            continue
        at = f"epoch {r['epochs']:g}" if isinstance(r.get("epochs"), (int, float)) else "an early epoch"
        if isinstance(r.get("planned_epochs"), (int, float)):
            at += f" of {r['planned_epochs']:g}"
        state = "still training" if r.get("training") else f"stopped ({r.get('stop_reason') or 'not complete'})"
        parts.append(f"{r['run']}: {state} at {at}")
    if not parts:
        return None
    return (f"note: not finished runs ({'; '.join(parts)}): their accuracies are those of their last checkpoint, "
            "not final results")


def accuracy_uncertainty(accuracy: float | None, n: int | None) -> float | None:
    """Rough standard error of an accuracy measured on ``n`` images, ``sqrt(p (1 - p) / n)`` (a binomial
    proportion): 1,000 images at 50% give about 0.016. It covers the luck of the evaluation images only, not
    that of the training run (see the seeds' spread for that)."""
    if accuracy is None or not n or not math.isfinite(accuracy):
        return None
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def _model_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The model's keyword options that change it (``conv2_std``, ...); the class count is shown as data."""
    kwargs = (meta.get("model") or {}).get("kwargs") or {}
    return {k: v for k, v in sorted(kwargs.items()) if k != "num_classes"} if isinstance(kwargs, dict) else {}


def _data_facts(meta: dict[str, Any]) -> dict[str, Any]:
    """``data``: the folder or file the run read (its name; the official release downloaded when none), with
    the options that change what is read; ``classes``: its class count."""
    args = (meta.get("data") or {}).get("args") or {}
    path = args.get("data")
    label = Path(str(path)).name if path else f"{args.get('dataset') or 'cifar10'} (download)"
    # test_split: another fraction of the same class folders holds out other test images
    label += "".join(f" {key}={args[key]}" for key in ("dataset", "labels", "resize", "test_split")
                     if path and args.get(key))
    if not path and args.get("labels"):
        label += f" labels={args['labels']}"
    return {"data": label, "data_path": str(path) if path else None, "classes": len(meta.get("classes") or [])}


def _data_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row.get("data_path") or row.get("data"), row.get("data"), row.get("classes")


def _eval_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return _data_key(row) + (row.get("eval_split"), row.get("eval_images"))


# run.json options that do not change what a run computes (how fast, where, what is logged) or that compare
# groups by (the seed)
_NOT_CONFIGURATION = ("seed", "device", "compile", "step", "progress", "eval_every", "checkpoint_every",
                      "log_every")


def _configuration(meta: dict[str, Any]) -> str:
    """Everything that defines a run but its seed (model spec, data arguments, options, recipe), as one JSON
    string: runs with the same configuration differ only in their seed."""
    options = {k: v for k, v in (meta.get("options") or {}).items() if k not in _NOT_CONFIGURATION}
    data_args = {k: v for k, v in ((meta.get("data") or {}).get("args") or {}).items() if k != "cache_dir"}
    return json.dumps({"model": meta.get("model"), "data": data_args, "options": options,
                       "recipe": meta.get("recipe"), "classes": meta.get("classes"), "epochs": meta.get("epoch"),
                       "eval_split": meta.get("eval_split")}, sort_keys=True, default=str)


def _add_seed_groups(rows: list[dict[str, Any]]) -> None:
    """Runs of one configuration with different seeds: each such row gets ``seed_group`` (the group's runs,
    seeds, and the mean and sample standard deviation of their final accuracies)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["configuration"], []).append(row)
    for members in groups.values():
        seeds = {r.get("seed") for r in members}
        accs = [r["final_accuracy"] for r in members if r.get("final_accuracy") is not None]
        if len(members) < 2 or len(seeds) < 2 or len(accs) < 2:
            continue
        group = {"runs": [r["run"] for r in members], "seeds": sorted(seeds, key=str),
                 "mean_accuracy": float(np.mean(accs)), "sd_accuracy": float(np.std(accs, ddof=1)),
                 "min_accuracy": min(accs), "max_accuracy": max(accs), "n": len(accs)}
        for r in members:
            r["seed_group"] = group


COLUMNS = [("run", "run"), ("model", "model"), ("data", "data"), ("classes", "classes"), ("seed", "seed"),
           ("split", "eval split"), ("final", "final acc"), ("best", "best acc"), ("train", "train images"),
           ("recipe", "recipe"), ("batch", "batch"), ("lr", "peak lr"), ("epochs", "epochs"), ("time", "train time"),
           ("rate", "images/s"), ("ce", "final cross-entropy"), ("params", "params"), ("size", "size fp32+EMA"),
           ("macs", "mult-adds")]
LEFT = {"run", "model", "data", "recipe", "split"}
TABLE_WIDTH = 100  # the terminal table: columns are split into blocks, each repeating the run, to fit it
# the longest cells shown in the terminal table (reports show them whole)
CELL_LIMITS = {"run": 24, "model": 40, "data": 24}

NOTES = ("accuracy: precision@1 on each run's eval split (val: images held out of the training set, "
         "test: the test set), with its number of images; final acc +-: a rough standard error from that "
         "number alone, sqrt(p(1-p)/n) in points (1,000 images: about +-1.5), which leaves out the luck of "
         "training (see the seeds' spread); final cross-entropy: training loss/cross_entropy "
         "of the last epoch (the curves also show loss/total, which adds the weight-decay terms); peak lr: "
         "of the first parameter group; mult-adds per image, forward")


def _points(x: float) -> str:
    return f"{100 * x:.1f}"


def _model_cell(row: dict[str, Any]) -> str:
    options = row.get("model_options") or {}
    shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items())
    return f"{row['model']} ({shown})" if shown else row["model"]


def _cells(row: dict[str, Any]) -> dict[str, str]:
    def number(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    t = row["train_time_s"]
    split = row.get("eval_split") or "-"
    if row.get("eval_images") is not None and split != "-":
        split = f"{split} ({row['eval_images']:,})"
    final = format_accuracy(row["final_accuracy"])
    if row.get("final_accuracy_uncertainty") is not None and row["final_accuracy"] is not None:
        final += f" +-{_points(row['final_accuracy_uncertainty'])}"
    return {
        "run": row["run"], "model": _model_cell(row), "data": row.get("data") or "-",
        "classes": number(row.get("classes"), "d"), "seed": number(row.get("seed"), ""),
        "params": f"{row['params']:,}",
        "size": f"{row['bytes_fp32_with_ema'] / 1e6:.1f} MB", "macs": f"{row['multiply_adds'] / 1e6:.1f}M",
        "train": number(row.get("train_images"), ","), "recipe": row.get("recipe") or "-",
        "batch": number(row.get("batch_size"), "d"), "lr": number(row.get("lr"), ".3g"),
        "epochs": number(row["epochs"], "g"),
        "time": "-" if t is None else (f"{t:.0f} s" if t < 600 else f"{t / 60:.1f} min"),
        "rate": number(row["images_per_s"], ",.0f"), "ce": number(row.get("final_cross_entropy"), ".4f"),
        "split": split, "best": format_accuracy(row["best_accuracy"]), "final": final,
    }


def _shorten(text: str, limit: int, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    return "..." + text[-(limit - 3):] if keep_end else text[:limit - 3] + "..."


def _column_blocks(widths: dict[str, int], width: int) -> list[list[str]]:
    """The columns in order, in blocks that each start with the run and fit ``width`` characters."""
    blocks: list[list[str]] = [["run"]]
    for key, _ in COLUMNS[1:]:
        block = blocks[-1]
        if len(block) > 1 and sum(widths[k] + 2 for k in block) + widths[key] > width:
            blocks.append(["run"])
        blocks[-1].append(key)
    return blocks


def notes_above(rows: list[dict[str, Any]]) -> list[str]:
    """Warnings that must be read before the table: runs trained on other data, or evaluated on other images."""
    notes = []
    if len({_data_key(r) for r in rows}) > 1:
        listed = "; ".join(f"{r['run']}: {r.get('data')} ({r.get('classes')} classes)" for r in rows)
        notes.append(f"note: these runs differ in their data ({listed}): their accuracies do not compare")
    elif len({_eval_key(r) for r in rows}) > 1:
        listed = "; ".join(f"{r['run']}: {_cells(r)['split']}" for r in rows)
        notes.append(f"note: these runs were evaluated on different images ({listed}): their accuracies do not "
                     "compare directly")
    progress = _progress_note(rows)
    if progress:
        notes.append(progress)
    return notes


def notes_below(rows: list[dict[str, Any]], max_pairs: int = 6) -> list[str]:
    """Seed groups (mean and spread) and pairs of comparable runs whose final accuracies differ by less than the
    rough uncertainty of the difference, ``sqrt(se_a^2 + se_b^2)``."""
    notes, seen = [], set()
    for r in rows:
        group = r.get("seed_group")
        if group and id(group) not in seen:
            seen.add(id(group))
            seeds = ", ".join(map(str, group["seeds"]))
            notes.append(f"{_model_cell(r)}, {r.get('data')}: {group['n']} seeds ({seeds}"
                         f"), final acc mean {format_accuracy(group['mean_accuracy'])}, sd "
                         f"{_points(group['sd_accuracy'])} points (range {format_accuracy(group['min_accuracy'])}"
                         f" - {format_accuracy(group['max_accuracy'])}; runs {', '.join(group['runs'])})")
    close = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if _eval_key(a) != _eval_key(b) or a.get("final_accuracy_uncertainty") is None \
                    or b.get("final_accuracy_uncertainty") is None:
                continue
            diff = abs(a["final_accuracy"] - b["final_accuracy"])
            bound = math.hypot(a["final_accuracy_uncertainty"], b["final_accuracy_uncertainty"])
            if diff < bound:
                close.append(f"{a['run']} and {b['run']}: final accuracies differ by {_points(diff)} points, less "
                             f"than the uncertainty of the difference (+-{_points(bound)}): not a clear difference")
    notes += close[:max_pairs]
    if len(close) > max_pairs:
        notes.append(f"... and {len(close) - max_pairs} more pairs within their uncertainty")
    return notes


def format_table(rows: list[dict[str, Any]], width: int = TABLE_WIDTH) -> str:
    """Aligned text table (numbers right-aligned) for a terminal of ``width`` columns: notes on the data and
    evaluation splits above it, the columns in blocks that fit, then notes on seeds and close results."""
    cells = []
    for r in rows:
        c = _cells(r)
        for key, limit in CELL_LIMITS.items():
            c[key] = _shorten(c[key], limit, keep_end=key == "run")
        cells.append(c)
    widths = {k: max(len(title), *(len(c[k]) for c in cells)) for k, title in COLUMNS}

    def line(values: dict[str, str], keys: list[str]) -> str:
        return "  ".join(values[k].ljust(widths[k]) if k in LEFT else values[k].rjust(widths[k])
                         for k in keys).rstrip()

    wrap = (lambda text: textwrap.wrap(text, width, subsequent_indent="  "))  # noqa: E731
    lines = [part for note in notes_above(rows) for part in wrap(note)]
    for n, keys in enumerate(_column_blocks(widths, width)):
        if n or lines:
            lines.append("")
        lines += [line(dict(COLUMNS), keys), "  ".join("-" * widths[k] for k in keys)]
        lines += [line(c, keys) for c in cells]
    below = notes_below(rows)
    if below:
        lines.append("")
        lines += [part for note in below for part in wrap(note)]
    lines += wrap(f"({NOTES})")
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
    above = [f"**{note}**" for note in notes_above(rows)]
    below = [f"- {note}" for note in notes_below(rows)]
    return "\n".join([f"# {title}", "", *(above + [""] if above else []), head, rule, *body, "",
                      *(below + [""] if below else []), f"*{NOTES[0].upper()}{NOTES[1:]}.*", "", *figures, ""])


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
            + "".join(f"<p><strong>{html.escape(note)}</strong></p>" for note in notes_above(rows))
            + f"<table><tr>{head}</tr>{body}</table>"
            + "".join(f"<p>{html.escape(note)}</p>" for note in notes_below(rows))
            + f"<p class='notes'>{html.escape(NOTES)}.</p>"
            f"{figures}</body></html>\n")


def _check_report_folder(out_dir: Path, names: list[str]) -> None:
    """Refuse an ``out_dir`` where writing ``names`` would replace files that an earlier ``compare`` did not
    write (a user's own ``report.md``); a folder holding an earlier report (its compare.json) is rewritten."""
    taken = [name for name in names if os.path.lexists(out_dir / name)]
    if not taken:
        return
    try:
        earlier = json.loads((out_dir / "compare.json").read_text())
        ours = isinstance(earlier, list) and all(isinstance(row, dict) and "run" in row for row in earlier)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise LocalconvError(f"--out {out_dir}: {out_dir / taken[0]} exists and {out_dir} holds no earlier "
                             "compare report (compare.json); choose another --out, nothing was replaced")


def write_report(runs: list[RunRecord], rows: list[dict[str, Any]], out_dir: Path, fmt: str = "md",
                 title: str = "localconv runs") -> Path:
    """Plots plus ``report.md`` / ``report.html`` (and ``compare.json``) in ``out_dir``; returns the report.
    ``rows``: :func:`compare_rows` of ``runs``."""
    if fmt not in ("md", "html"):
        raise LocalconvError(f"--format must be md or html, got {fmt!r}")
    out_dir = Path(out_dir)
    _check_report_folder(out_dir, [f"report.{fmt}", "compare.json", *PLOTS.values()])
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
