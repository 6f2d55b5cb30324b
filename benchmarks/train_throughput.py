"""Training throughput of what a user runs: ``localconv train`` on the full data set, each recipe.

    python benchmarks/train_throughput.py --data ../shared/datasets/cifar10-jpeg [--models tf-tutorial,cc-11pct]
        [--epochs 1] [--rounds 2] [--threads 2] [--json OUT]

Each configuration is one ``localconv train`` process (default options unless the configuration names
some), rounds alternate the configurations, and the figures are medians over rounds:

- ``train img/s``: the images/s the engine logs for its training steps (metrics.jsonl, whole epochs);
- ``eval s``: the run's evaluation time per epoch (its ``wall_s`` minus the time in training steps);
- ``process s``: the whole command, start-up and data loading (from the decoded-image cache) included.

The configurations split the difference between the recipes into its parts: batch size, arithmetic
(``--amp``: bf16 autocast, fast on CPUs with AMX / AVX512-BF16, emulated and slow on others), the
training-set size (``--limit-train 5000``, what earlier micro-benchmarks trained on) and evaluation.
The baseline measured in the same run is ``original`` (the published procedure, batch 128, float32);
every row prints its training rate relative to it. The last line prints the fast recipe's default
rate and its ratio to the baseline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from localconv_cli import run_localconv

CONFIGS = {  # name: extra `localconv train` arguments
    "original": ["--recipe", "original"],
    "fast": ["--recipe", "fast"],
    "fast --no-amp": ["--recipe", "fast", "--no-amp"],
    "fast --no-amp --batch-size 256": ["--recipe", "fast", "--no-amp", "--batch-size", "256"],
    "fast --limit-train 5000": ["--recipe", "fast", "--limit-train", "5000"],
    "fast --eval-every 0": ["--recipe", "fast", "--eval-every", "0"],
}
BASELINE = "original"


def run_one(model: str, extra: list[str], data: str, epochs: float, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        _, process_s = run_localconv("train", "--model", model, "--data", data, "--epochs", str(epochs), "--out",
                                     str(out), "--no-progress", "--checkpoint-every", "1000", *extra, threads=threads)
        epochs_rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                      if json.loads(line).get("kind") == "epoch"]
        run = json.loads((out / "run.json").read_text())
    steps = [0] + [r["step"] for r in epochs_rec]  # images of each record: its steps times the batch
    train_s = sum((b - a) * run["batch_size"] / r["images_per_s"] for a, b, r in zip(steps, steps[1:], epochs_rec))
    return {"train_images_per_s": statistics.median(r["images_per_s"] for r in epochs_rec),
            "eval_s_per_epoch": max(0.0, epochs_rec[-1]["wall_s"] - train_s) / len(epochs_rec),
            "process_s": process_s, "batch_size": run["batch_size"], "amp": run["amp"],
            "accuracy": epochs_rec[-1].get("accuracy")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the data set (as `localconv train --data`)")
    p.add_argument("--models", default="tf-tutorial,cc-11pct")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    if BASELINE not in configs:
        configs.insert(0, BASELINE)
    records: list[dict] = []
    for model in args.models.split(","):
        for r in range(args.rounds):
            for name in configs:
                rec = {"model": model, "config": name, "round": r,
                       **run_one(model, CONFIGS[name], args.data, args.epochs, args.threads)}
                print(json.dumps(rec), flush=True)
                records.append(rec)
    rows, last = [], ""
    print("\n| model | configuration | batch | bf16 | train img/s | vs original | eval s/epoch | process s |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        med = {}
        for name in configs:
            rs = [x for x in records if x["model"] == model and x["config"] == name]
            med[name] = {k: statistics.median(x[k] for x in rs)
                         for k in ("train_images_per_s", "eval_s_per_epoch", "process_s")}
            med[name].update(batch_size=rs[0]["batch_size"], amp=rs[0]["amp"])
        for name in configs:
            m = med[name]
            ratio = m["train_images_per_s"] / med[BASELINE]["train_images_per_s"]
            rows.append({"model": model, "config": name, **m, "ratio_to_original": ratio})
            print(f"| {model} | {name} | {m['batch_size']} | {'yes' if m['amp'] else 'no'} | "
                  f"{m['train_images_per_s']:,.0f} | {ratio:.2f}x | {m['eval_s_per_epoch']:.1f} | "
                  f"{m['process_s']:.0f} |")
        if "fast" in med:
            last += (f"{model}: fast {med['fast']['train_images_per_s']:,.0f} img/s = "
                     f"{med['fast']['train_images_per_s'] / med[BASELINE]['train_images_per_s']:.2f}x original; ")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": records, "summary": rows, "args": vars(args) | {"json": str(args.json)}},
                                        indent=1))
    print(last.rstrip("; ") or "no fast configuration measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
