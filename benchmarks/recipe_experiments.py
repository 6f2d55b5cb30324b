"""One controlled recipe experiment on the CPU: the fast recipe with some settings changed, 8 epochs, test accuracy.

    python benchmarks/recipe_experiments.py MODEL [KEY=VALUE ...] [--out FILE]

    python benchmarks/recipe_experiments.py tf-tutorial tag=J2 amp=1 crop_jitter=2
    python benchmarks/recipe_experiments.py cc-11pct tag=cK1 amp=1 crop_jitter=2 ema_decay=null batch_size=128 \\
        weight_decay=5e-4 nesterov=true lr_scale=2

KEY=VALUE: any recipe setting (``RecipeSettings``, values as JSON: true/false/null/numbers), or
``amp`` (0/1: bf16 autocast), ``lr_scale``, ``seed`` (default 0), ``epochs`` (default 8), ``threads``
(torch threads, default 2), ``tag`` (a label), and two changes that are not recipe settings, measured and
dropped (BENCHMARKS.md "Fast recipe on the CPU"): ``init=pytorch`` (every weight redrawn as PyTorch's default,
U(+-1/sqrt(fan_in)); biases as published) and ``zca=EPS`` (a fixed 5x5 ZCA whitening convolution, 3 -> 3
channels, after the model's input normalization in training and test batches; EPS times the mean eigenvalue).

Trains on all 50,000 JPEG training images, evaluates single / flip / 10-view on the 10,000 test images and
appends one JSON line to ``--out`` (the log behind BENCHMARKS.md's experiment table).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F

import localconv
from localconv.cli.common import load_data
from localconv.data.loader import select_splits
from localconv.nn.local import LocallyConnected2d
from localconv.training.engine import Trainer, TrainOptions
from localconv.training.evaluate import evaluate
from localconv.training.recipes import RecipeSettings

HARNESS_KEYS = {"amp", "lr_scale", "seed", "epochs", "threads", "tag", "init", "zca"}


def pytorch_default_init(model: torch.nn.Module) -> None:
    """Every weight tensor U(+-1/sqrt(fan_in)) (PyTorch's default for conv and linear layers); biases kept."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.ndim < 2 or name.startswith("bias"):
                    continue
                dims = getattr(module, "_dims", 2)
                fan_in = math.prod(p.shape[dims + 1:]) if isinstance(module, LocallyConnected2d) else math.prod(p.shape[1:])
                bound = 1 / math.sqrt(fan_in)
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound))


def install_zca(model: torch.nn.Module, train_images, eps: float) -> None:  # noqa: ANN001
    """Patch the batch normalization of localconv.data.augment to add a fixed ZCA whitening convolution."""
    import localconv.data.augment as augment

    spec = model.input_spec
    side = spec.crop
    off = (32 - side) // 2
    images = torch.from_numpy(train_images[:10000]).float()[:, :, off:off + side, off:off + side]
    mean = augment.centre_mean(model.pixel_mean, side, images.device) if model.needs_pixel_mean() else None
    z = augment.normalize(images, spec, mean)
    patches = F.unfold(z, 5).transpose(1, 2).reshape(-1, 75)
    patches = patches[torch.randperm(patches.shape[0], generator=torch.Generator().manual_seed(0))[:300000]]
    patches = patches - patches.mean(0)
    lam, vectors = torch.linalg.eigh((patches.T @ patches / patches.shape[0]).double())
    whitening = (vectors @ torch.diag((lam + eps * lam.mean()).rsqrt()) @ vectors.T).float()
    filters = whitening[[c * 25 + 12 for c in range(3)]].reshape(3, 3, 5, 5)  # the centre pixel's rows
    normalize = augment.normalize
    augment.normalize = lambda x, s, m: F.conv2d(normalize(x, s, m), filters.to(x.device), padding=2)
    model._check_value_range = lambda x: None  # whitened input is no longer per-image standardized


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg"))
    p.add_argument("--out", type=Path, default=Path("recipe_experiments.jsonl"))
    args = p.parse_args()
    given: dict[str, object] = {}
    for item in args.settings:
        key, _, raw = item.partition("=")
        try:
            given[key] = json.loads(raw)
        except ValueError:
            given[key] = raw
    known = {f.name for f in fields(RecipeSettings)} | HARNESS_KEYS
    unknown = sorted(set(given) - known)
    if unknown:
        p.error(f"unknown setting(s) {unknown}")
    overrides = {k: v for k, v in given.items() if k not in HARNESS_KEYS}
    torch.set_num_threads(int(given.get("threads", 2)))
    seed = int(given.get("seed", 0))
    data = load_data(args.data, None, progress=False)
    splits = select_splits(data.train_images, data.train_labels, data.test_images, data.test_labels)
    torch.manual_seed(seed)
    model = localconv.create_model(args.model)
    if given.get("init") == "pytorch":
        pytorch_default_init(model)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        options = TrainOptions(recipe="fast", epochs=float(given.get("epochs", 8)), seed=seed, device="cpu",
                               progress=False, eval_every=0, checkpoint_every=10**6, log_every=0,
                               lr_scale=float(given.get("lr_scale", 1.0)),
                               amp=None if "amp" not in given else bool(given["amp"]),
                               recipe_overrides=overrides or None)
        trainer = Trainer(model, splits, Path(tmp) / "run", options)
        if "zca" in given:  # after the Trainer has set the pixel mean
            install_zca(model, data.train_images, float(given["zca"]))
        state = trainer.fit()
        final = trainer.eval_model()
        accuracy = {views: evaluate(final, trainer.splits.test_images, trainer.splits.test_labels, views=views,
                                    amp=trainer.amp).accuracy for views in ("single", "flip", "multiview")}
    record = {"model": args.model, **given, "train_s": round(state.train_time_s, 1),
              "wall_s": round(time.time() - t0, 1), "bs": trainer.batch_size, "amp": trainer.amp,
              **{k: round(100 * v, 2) for k, v in accuracy.items()}}
    print(json.dumps(record))
    with open(args.out, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
