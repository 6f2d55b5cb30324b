"""The 2016 experiment, replayed (issue 22, item 8): the blog's failing network in a plain training loop.

    python benchmarks/replay_2016.py --data ../shared/datasets/cifar10-jpeg [--configs 2016,...] [--steps 1500]
        [--seed 0] [--threads 1] [--out benchmarks/results/cpu-2026-12-06]

The loop is the tutorial's own, written out plainly (no localconv Trainer): plain SGD at lr 0.1 (no momentum),
batch 128, loss = mean softmax cross-entropy on the model's output (``F.cross_entropy``, which applies log-softmax
itself) + the tutorial's weight-decay terms (``model.regularization_loss()``), on the full training set of the data
read by localconv's loader (``load_cifar10``: 50,000 images of the JPEG copy), shuffled and augmented as
``localconv train`` does (``draw_epoch_plan``/``train_batch`` with the model's input spec: random 24x24 crop,
flip, brightness/contrast, per-image standardization; last partial batch of an epoch dropped), seed ``--seed``.
After ``--steps`` steps: test precision@1 on the data's 10,000 test images, single centre crop
(``localconv.training.evaluate``), with the final weights (no moving average).

Configurations (``--configs``, comma-separated):
  2016                 tf-tutorial-2016: conv1 and conv2 std 1e-4, shared-conv top, softmax inside the model
  2016-conv2-1e-2      the same with conv2 at 1e-2 (the blog's fix); conv1 stays at 1e-4, the softmax stays
  2016-conv2-1e-2-logits  the blog's fix and no softmax in the model (logits, exercise 1 done right)
  tf-tutorial-conv2-1e-4  today's tf-tutorial with --conv2-std 1e-4 (conv1 5e-2, fc top, logits)

``--summarize`` prints a Markdown table of the JSON files already in ``--out``.
Each configuration writes ``<out>/replay_2016_<config>.json``: the options, the cross-entropy every step
(``ce``, without the decay term) and the test accuracy. Figures depend on the data (the JPEG copy is not
lossless CIFAR-10), the seed and the machine's float arithmetic, not on its load; times are only recorded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "2016": ("tf-tutorial-2016", {}),
    "2016-conv2-1e-2": ("tf-tutorial-2016", {"conv2_std": 1e-2}),
    "2016-conv2-1e-2-logits": ("tf-tutorial-2016", {"conv2_std": 1e-2, "softmax_output": False}),
    "tf-tutorial-conv2-1e-4": ("tf-tutorial", {"conv2_std": 1e-4}),
}
BATCH, LR = 128, 0.1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cpu-2026-12-06"


def replay(config: str, data: Any, steps: int, seed: int, log_every: int = 100) -> dict[str, Any]:
    """Train configuration ``config`` for ``steps`` steps on ``data`` (a ``CifarData``) and test it."""
    import torch
    import torch.nn.functional as F

    from localconv import create_model
    from localconv.data.augment import draw_epoch_plan, train_batch
    from localconv.training.evaluate import evaluate

    name, kwargs = CONFIGS[config]
    torch.manual_seed(seed)
    model = create_model(name, num_classes=data.num_classes, **kwargs)
    model.train()
    # measured, not copied from the options: a truncated normal of std s has std ~0.88 s
    init_std = {layer: float(getattr(model, layer).weight.detach().std()) for layer in ("conv1", "conv2")}
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    images, labels = torch.from_numpy(data.train_images), torch.from_numpy(data.train_labels)
    n, spec = images.shape[0], model.input_spec
    per_epoch = n // BATCH
    ce_per_step: list[float] = []
    train_correct = 0
    start = time.perf_counter()
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        if k == 0:
            plan = draw_epoch_plan(n, spec, seed, epoch)
        b = plan.batch(k * BATCH, (k + 1) * BATCH)
        x, y = train_batch(images[b.order], b, spec), labels[b.order]
        out = model(x)
        ce = F.cross_entropy(out.float(), y)  # takes `out` as logits: a second softmax on a softmax output
        loss = ce + model.regularization_loss()
        if not math.isfinite(float(loss)):
            raise SystemExit(f"{config}: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ce_per_step.append(round(float(ce), 5))
        if step >= steps - 100:
            train_correct += int((out.argmax(1) == y).sum())
        if (step + 1) % log_every == 0:
            recent = ce_per_step[-log_every:]
            print(f"{config}: step {step + 1}/{steps} cross-entropy {sum(recent) / len(recent):.4f} "
                  f"(mean of the last {log_every})", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - start
    result = evaluate(model, torch.from_numpy(data.test_images), torch.from_numpy(data.test_labels))
    last = ce_per_step[-100:]
    return {
        "config": config, "model": name, "model_kwargs": kwargs,
        "conv1_weight_std_at_init": init_std["conv1"], "conv2_weight_std_at_init": init_std["conv2"],
        "softmax_in_model": bool(model.outputs_probabilities),
        "top": model.top, "steps": steps, "batch_size": BATCH, "lr": LR, "optimizer": "SGD, no momentum",
        "loss": "F.cross_entropy(model output) + regularization_loss()", "seed": seed,
        "data": data.source, "train_images": n, "test_images": result.n, "test_views": "single (centre 24x24)",
        "weights": "final (no moving average)",
        "ce_first": ce_per_step[0], "ce_last100_mean": sum(last) / len(last), "ln10": math.log(10),
        "train_accuracy_last100_steps": 100 * train_correct / (min(100, steps) * BATCH),
        "test_accuracy": 100 * result.accuracy,
        "test_predicted_classes": int(result.predictions.unique().numel()),
        "ce": ce_per_step,
        "train_s": round(train_s, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs (times are not speed figures)",
    }


def left_chance_at(ce: list[float], window: int = 20, margin: float = 0.05) -> int | None:
    """The first step (1-based) at which the mean cross-entropy of the last ``window`` steps is ``margin``
    below chance (ln 10); None if it never is."""
    for end in range(window, len(ce) + 1):
        if sum(ce[end - window:end]) / window < math.log(10) - margin:
            return end
    return None


def summary_table(folder: Path) -> str:
    """A Markdown table of the replay JSON files in ``folder``, in the order of CONFIGS."""
    rows = ["| config | model, options | cross-entropy, mean of steps 1-100 / 401-500 / last 100 | 20-step mean "
            "below ln 10 - 0.05 from step | test accuracy (classes predicted) |", "|---|---|---|---|---|"]
    for config in CONFIGS:
        path = folder / f"replay_2016_{config}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        ce = r["ce"]
        means = " / ".join(f"{sum(ce[a:b]) / len(ce[a:b]):.4f}" for a, b in ((0, 100), (400, 500), (-100, None)))
        options = ", ".join(f"{k}={v}" for k, v in r["model_kwargs"].items()) or "defaults"
        left = left_chance_at(ce) or "never"
        rows.append(f"| {config} | `{r['model']}` {options} | {means} | {left} | {r['test_accuracy']:.2f}% "
                    f"({r['test_predicted_classes']}) |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="the data set (as `localconv train --data`); required unless --summarize")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON files")
    p.add_argument("--summarize", action="store_true", help="only print the table of the JSON files in --out")
    args = p.parse_args()
    if args.summarize:
        print(summary_table(args.out))
        return 0
    if not args.data:
        p.error("--data is required (the data set, as `localconv train --data`)")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    import torch

    from localconv.data import load_cifar10

    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data, progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    for config in configs:
        record = replay(config, data, args.steps, args.seed)
        path = args.out / f"replay_2016_{config}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
        print(f"{config}: cross-entropy {record['ce_first']:.4f} -> {record['ce_last100_mean']:.4f} (last 100 "
              f"steps), test accuracy {record['test_accuracy']:.2f}% ({record['test_images']} images) -> {path}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
