"""Accuracy of the fast recipe on the CPU: today's defaults against the fast recipe as it was before (issue 14).

    python benchmarks/cpu_accuracy.py --data ../shared/datasets/cifar10-jpeg [--models tf-tutorial,cc-11pct]
        [--seeds 0,1] [--epochs 8] [--long-epochs 30 | --long-epochs 0] [--threads 2] [--json OUT]

What a user runs: each run is ``localconv train --recipe fast --epochs 8 --seed S`` on the full training set
(50,000 JPEG-decoded images), then ``localconv eval --flip`` on the 10,000 test images. ``before`` is the
fast recipe as it was until 2026-12-02, given explicitly with ``--recipe-set`` and ``--no-amp`` (batch 256,
float32, the model's own decay, heavy-ball momentum, EMA 0.999 ...), so it stays measurable whatever the
defaults become; ``fast`` is today's defaults. The two alternate per seed on the same machine.

Targets (issue 14, item 6): tf-tutorial ``fast`` mean over the seeds >= 79.0% (flip); cc-11pct ``fast`` at least
3 points above ``before``; each ``fast`` run in no more wall time than ``before`` (the median over seeds of the
``localconv train`` process, start-up and per-epoch evaluation included); then the longer horizon: tf-tutorial,
``--long-epochs`` epochs, seed 0, 10-view test (``localconv eval --multiview``) >= 84.0%.
The last line prints the accuracies against the targets. The data is the JPEG copy (not lossless CIFAR-10).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from localconv_cli import run_localconv

BEFORE = {  # the fast recipe's CPU settings until 2026-12-02 (recipes.py then), with --no-amp
    "batch_size": 256, "ema_decay": 0.999, "ema_warmup": True, "label_smoothing": 0.1,
    "use_regularization_loss": True, "tta": "flip", "nesterov": False, "weight_decay": None,
    "crop_jitter": None, "photometric": None, "lr_boost": 3.0,
}
RECIPES = {
    "before": ["--recipe", "fast", "--no-amp", *(arg for key, value in BEFORE.items()
                                                  for arg in ("--recipe-set", f"{key}={json.dumps(value)}"))],
    "fast": ["--recipe", "fast"],
}
TF_TARGET, CC_GAIN, LONG_TARGET = 79.0, 3.0, 84.0


def one_run(model: str, recipe: str, seed: int, epochs: float, data: str, views: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        _, train_s = run_localconv("train", "--model", model, "--data", data, "--epochs", str(epochs), "--seed",
                               str(seed), "--out", str(out), "--no-progress", *RECIPES[recipe], threads=threads)
        run = json.loads((out / "run.json").read_text())
        done, _ = run_localconv("eval", str(out), "--data", data, f"--{views}", "--json", threads=threads)
        result = json.loads(done.stdout)
    return {"model": model, "recipe": recipe, "seed": seed, "epochs": epochs, "views": views,
            "accuracy": 100 * result["accuracy"], "train_process_s": train_s, "train_time_s": run["train_time_s"],
            "batch_size": run["batch_size"], "amp": run["amp"], "recipe_settings": run["recipe"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the data set (as `localconv train --data`)")
    p.add_argument("--models", default="tf-tutorial,cc-11pct")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--long-epochs", type=float, default=30.0, help="tf-tutorial's longer check (0: skip it)")
    p.add_argument("--long-only", action="store_true", help="only the longer check (e.g. run first, apart)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    runs: list[dict] = []
    for model in models if not args.long_only else []:
        for seed in seeds:
            for recipe in RECIPES:
                rec = one_run(model, recipe, seed, args.epochs, args.data, "flip", args.threads)
                print(json.dumps({k: v for k, v in rec.items() if k != "recipe_settings"}), flush=True)
                runs.append(rec)
    summary, verdicts = {}, []
    print(f"\n| model | recipe | flip accuracy, mean of seeds {args.seeds} (each) | train process s, median |")
    print("|---|---|---|---|")
    for model in models if runs else []:
        for recipe in RECIPES:
            rs = [r for r in runs if r["model"] == model and r["recipe"] == recipe]
            acc = statistics.fmean(r["accuracy"] for r in rs)
            wall = statistics.median(r["train_process_s"] for r in rs)
            summary[(model, recipe)] = (acc, wall)
            each = ", ".join(f"{r['accuracy']:.2f}" for r in rs)
            print(f"| {model} | {recipe} | {acc:.2f}% ({each}) | {wall:.0f} |")
        (fast, fast_wall), (before, before_wall) = summary[(model, "fast")], summary[(model, "before")]
        if model == "tf-tutorial":
            verdicts.append(f"tf-tutorial {fast:.2f}% (target >= {TF_TARGET}%: {'met' if fast >= TF_TARGET else 'NOT met'})")
        else:
            gain = fast - before
            verdicts.append(f"{model} {fast:.2f}% vs before {before:.2f}% ({gain:+.2f} points, target >= "
                            f"+{CC_GAIN}: {'met' if gain >= CC_GAIN else 'NOT met'})")
        verdicts[-1] += f", wall {fast_wall:.0f} s vs {before_wall:.0f} s ({'met' if fast_wall <= before_wall else 'NOT met'})"
    long_run = None
    if args.long_epochs > 0 and "tf-tutorial" in models:
        long_run = one_run("tf-tutorial", "fast", seeds[0], args.long_epochs, args.data, "multiview", args.threads)
        print(json.dumps({k: v for k, v in long_run.items() if k != "recipe_settings"}), flush=True)
        verdicts.append(f"tf-tutorial {args.long_epochs:g} epochs 10-view {long_run['accuracy']:.2f}% (target >= "
                        f"{LONG_TARGET}%: {'met' if long_run['accuracy'] >= LONG_TARGET else 'NOT met'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "long_run": long_run, "verdicts": verdicts,
                                         "args": {**vars(args), "json": str(args.json)}}, indent=1))
    prefix = f"{args.epochs:g} epochs, flip, mean of seeds {args.seeds}: " if runs else ""
    print(prefix + ("; ".join(verdicts) or "nothing measured"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
