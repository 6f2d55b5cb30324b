"""Time to accuracy: train a model per recipe and seed on the full training set, test on the test set.

    python benchmarks/time_to_accuracy.py --data DATA [--models tf-tutorial,cc-11pct] [--recipes fast,original]
        [--seeds 0,1,2] [--epochs fast:tf-tutorial=30,...] [--device cuda] [--step graph] [--compile]
        [--json OUT] [--smoke]

Per run: training time as the fast-training literature counts it (from the first training step to the end
of the final evaluation, excluding checkpoint writing; the one-time ``--compile`` compilation and
``--step graph`` capture are measured and reported separately as ``compile_warmup_s``), images/s, and test precision@1 single-view, with flip, and 10-view. Summary: mean and spread
(min..max, sample std) over seeds. Data: whatever --data is; for the shared JPEG copy say so when quoting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import localconv
from localconv.data import load_cifar10
from localconv.data.loader import select_splits
from localconv.training.engine import Trainer, TrainOptions
from localconv.training.evaluate import evaluate

DEFAULT_EPOCHS = {("fast", "tf-tutorial"): 30, ("fast", "cc-11pct"): 40,
                  ("original", "tf-tutorial"): 30, ("original", "cc-11pct"): 30}


def parse_epochs(text: str | None) -> dict[tuple[str, str], float]:
    table = dict(DEFAULT_EPOCHS)
    for item in filter(None, (text or "").split(",")):
        key, value = item.split("=")
        recipe, model = key.split(":")
        table[(recipe, model)] = float(value)
    return table


def one_run(name: str, recipe: str, seed: int, epochs: float, data, device: str, compile_model: bool,  # noqa: ANN001
            limit_train: int | None, limit_test: int | None, batch_size: int | None, lr_scale: float = 1.0,
            step: str = "auto") -> dict:
    splits = select_splits(data.train_images, data.train_labels, data.test_images, data.test_labels,
                           limit_train=limit_train, limit_test=limit_test)
    torch.manual_seed(seed)
    model = localconv.create_model(name)
    with tempfile.TemporaryDirectory() as tmp:
        options = TrainOptions(recipe=recipe, epochs=epochs, seed=seed, device=device, progress=False,
                               eval_every=0, checkpoint_every=10**6, compile=compile_model, log_every=0,
                               batch_size=batch_size, lr_scale=lr_scale, step=step)
        trainer = Trainer(model, splits, Path(tmp) / "run", options)
        warmup_s = trainer.warm_up()  # compilation / graph capture, reported separately
        state = trainer.fit()  # train_time_s: steps + final evaluation, no checkpoint I/O
        eval_model = trainer.eval_model()
        images, labels = trainer.splits.test_images, trainer.splits.test_labels
        accs = {v: evaluate(eval_model, images, labels, views=v, amp=trainer.amp).accuracy
                for v in ("single", "flip", "multiview")}
    rates = [r["images_per_s"] for r in state.history[1:]] or [state.history[0]["images_per_s"]]
    return {"model": name, "recipe": recipe, "seed": seed, "epochs": epochs, "batch_size": trainer.batch_size,
            "lr_scale": lr_scale, "step": trainer.step_mode, "compile": compile_model,
            "train_time_s": state.train_time_s, "compile_warmup_s": warmup_s,
            "images_per_s": statistics.median(rates), "test_accuracy_in_run": state.last_accuracy,
            "test_single": accs["single"], "test_flip": accs["flip"], "test_10view": accs["multiview"],
            "n_test": int(labels.numel()), "device": str(trainer.device),
            "gpu": torch.cuda.get_device_name() if trainer.device.type == "cuda" else None}


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["recipe"]), []).append(r)
    out = []
    for (model, recipe), rs in groups.items():
        row = {"model": model, "recipe": recipe, "seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"]}
        for key in ("train_time_s", "images_per_s", "test_single", "test_flip", "test_10view"):
            vals = [r[key] for r in rs]
            row[key] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals),
                        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--models", default="tf-tutorial,cc-11pct")
    p.add_argument("--recipes", default="fast")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", default=None, help="overrides, e.g. fast:tf-tutorial=20,original:cc-11pct=10")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--step", default="auto", choices=("auto", "eager", "fused", "graph"),
                   help="training step mode (see localconv train --help)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr-scale", type=float, default=1.0)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script works")
    args = p.parse_args(argv)
    epochs = parse_epochs(args.epochs)
    if args.smoke:
        args.limit_train, args.limit_test, args.seeds = args.limit_train or 256, args.limit_test or 100, "0"
        epochs = {k: 1 for k in epochs}
    data = load_cifar10(args.data, progress=False)
    runs = []
    for name in args.models.split(","):
        for recipe in args.recipes.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                r = one_run(name, recipe, seed, epochs.get((recipe, name), 10), data, args.device, args.compile,
                            args.limit_train, args.limit_test, args.batch_size, args.lr_scale, args.step)
                runs.append(r)
                print(json.dumps(r), flush=True)
                if args.json:  # keep partial results if a later run is cut off
                    args.json.write_text(json.dumps({"data": data.source, "runs": runs,
                                                     "summary": summarize(runs)}, indent=1))
    for row in summarize(runs):
        t, a1, a10 = row["train_time_s"], row["test_single"], row["test_10view"]
        print(f"{row['model']:<12} {row['recipe']:<8} seeds {row['seeds']}: time {t['mean']:.1f}s "
              f"[{t['min']:.1f}..{t['max']:.1f}]  single {a1['mean']:.4f} [{a1['min']:.4f}..{a1['max']:.4f}]  "
              f"10-view {a10['mean']:.4f} [{a10['min']:.4f}..{a10['max']:.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
