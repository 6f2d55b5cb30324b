"""Training throughput: localconv's training loop vs a plain PyTorch baseline of the same model.

    python benchmarks/train_speed.py [--device cpu|cuda] [--quick] [--models tf-tutorial,cc-11pct] [--step MODE]
        [--json OUT]

localconv: the real engine (``Trainer.fit``): uint8 images resident on the device, whole-batch
augmentation, the fused LRN and local-layer kernels, and on CUDA bf16 autocast + channels_last
(+ ``--compile``). Measured from the images/s the engine logs per epoch, first epoch excluded (warm-up).

Baseline ("plain PyTorch", what a user writes first): a ``torch.utils.data.Dataset`` doing the same
augmentation per image in ``__getitem__`` (random crop, flip, brightness, contrast, standardization or
mean subtraction), ``DataLoader(shuffle=True, drop_last=True)``, the same architecture with PyTorch's
``nn.LocalResponseNorm`` and an unfold+einsum locally connected layer, eager fp32, ``torch.optim.SGD``.
It runs with 0 and with 2 loader workers and the faster of the two is the baseline.

Both train the same number of images, alternating (baseline, localconv, baseline, localconv ...),
and the ratio is taken of the medians. The last line prints the smallest speed-up over the models.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import localconv
from localconv.data.augment import BRIGHTNESS_MAX_DELTA, CONTRAST_RANGE
from localconv.data.loader import select_splits
from localconv.nn import LocallyConnected2d
from localconv.nn.lrn import CrossMapLRN
from localconv.nn.norm import CrossMapNorm
from localconv.training.engine import Trainer, TrainOptions


# ----------------------------------------------------------------------------- the plain baseline
class PerImageDataset(torch.utils.data.Dataset):
    """torchvision-style: one image at a time, augmented in __getitem__."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec, mean: torch.Tensor | None) -> None:  # noqa: ANN001
        self.images, self.labels, self.spec, self.mean = images, labels, spec, mean

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):  # noqa: ANN204
        x = torch.from_numpy(self.images[i]).float()
        if self.mean is not None:
            x = x - self.mean
        c = self.spec.crop
        top, left = np.random.randint(0, 33 - c, 2)
        x = x[:, top:top + c, left:left + c]
        if self.spec.flip and np.random.rand() < 0.5:
            x = x.flip(-1)
        if self.spec.photometric:
            x = x + np.random.uniform(-BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA)
            m = x.mean(dim=(1, 2), keepdim=True)
            x = (x - m) * np.random.uniform(*CONTRAST_RANGE) + m
        if self.spec.normalize == "standardize":
            x = (x - x.mean()) / max(x.std(unbiased=False).item(), x.numel() ** -0.5)
        return x, int(self.labels[i])


def _plain_local_forward(self: LocallyConnected2d, x: torch.Tensor) -> torch.Tensor:
    oh, ow, o, c, kh, kw = self.weight.shape
    pad = self.padding if len(self.padding) == 4 else (self.padding[1], self.padding[1], self.padding[0],
                                                      self.padding[0])
    if len(self.padding) == 4:  # (top, bottom, left, right) -> F.pad order
        pad = (self.padding[2], self.padding[3], self.padding[0], self.padding[1])
    cols = F.unfold(F.pad(x, pad), (kh, kw), stride=self.stride)
    y = torch.einsum("nkl,lok->nol", cols, self.weight.reshape(oh * ow, o, -1)).reshape(x.shape[0], o, oh, ow)
    y = y + self.bias
    return self.neuron(y) if hasattr(self, "neuron") else y


def plain_pytorch_copy(model: nn.Module) -> nn.Module:
    """The same architecture and weights with PyTorch's LRN and an unfold+einsum local layer."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, CrossMapLRN):
            parent, _, leaf = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, leaf,
                    nn.LocalResponseNorm(module.size, module.alpha, module.beta, module.k))
        elif isinstance(module, CrossMapNorm) and not module.blocked:
            module.forward = types.MethodType(
                lambda self, x: self.neuron(F.local_response_norm(x, self.size, self.scale, self.power, 1.0)), module)
        elif isinstance(module, LocallyConnected2d) and getattr(module, "_plain", True):
            module.forward = types.MethodType(_plain_local_forward, module)
    return plain


def baseline_images_per_s(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int, steps: int,
                          workers: int, device: torch.device) -> float:
    spec = model.input_spec
    mean = model.pixel_mean.cpu() if model.needs_pixel_mean() else None
    loader = torch.utils.data.DataLoader(PerImageDataset(images, labels, spec, mean), batch_size=batch,
                                         shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    done, t0 = 0, None
    while done < steps + 2:
        for x, y in loader:
            if done == 2:  # two warm-up steps
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps + 2:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- localconv
def localconv_images_per_s(name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps_per_epoch: int,
                           epochs: int, device: str, compile_model: bool, step: str = "auto") -> float:
    n = steps_per_epoch * batch
    splits = select_splits(images[:n], labels[:n], images[:batch], labels[:batch])
    model = localconv.create_model(name)
    with tempfile.TemporaryDirectory() as tmp:
        # The original recipe trains in float32 by default; bf16 autocast is asked for on CUDA so that this
        # measures the fast path a GPU user gets (as before the original recipe became fp32-only by default).
        amp = True if torch.device(device).type == "cuda" else None
        options = TrainOptions(recipe="original", epochs=epochs, batch_size=batch, device=device, progress=False,
                               eval_every=0, checkpoint_every=10**6, compile=compile_model, log_every=0, step=step,
                               amp=amp)
        trainer = Trainer(model, splits, Path(tmp) / "run", options)
        trainer.fit()
    rates = [r["images_per_s"] for r in trainer.state.history[1:]]  # first epoch = warm-up
    return statistics.median(rates)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer steps (CPU: within 2 minutes)")
    p.add_argument("--models", default="tf-tutorial,cc-11pct")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=None, help="alternating measurement rounds")
    p.add_argument("--compile", action="store_true", help="torch.compile localconv's model")
    p.add_argument("--step", default="auto", choices=("auto", "eager", "fused", "graph"),
                   help="localconv's training step mode (auto: eager on every device until the GPU suite checks fused/graph)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    steps = (60 if args.quick else 200) if on_gpu else (6 if args.quick else 20)
    rounds = args.rounds or (2 if args.quick else 3)
    rng = np.random.default_rng(0)
    n_img = max(steps + 2, 8) * args.batch_size
    images = rng.integers(0, 256, (n_img, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n_img).astype(np.int64)
    results = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        ref = localconv.create_model(name)
        if ref.needs_pixel_mean():
            ref.set_pixel_mean(torch.from_numpy(images.mean(0)).float())
        base_runs, ours_runs, workers_used = [], [], {}
        for r in range(rounds):
            best = 0.0
            for workers in (0, 2):
                plain = plain_pytorch_copy(ref).to(device)
                rate = baseline_images_per_s(plain, images, labels, args.batch_size, steps, workers, device)
                workers_used[workers] = max(workers_used.get(workers, 0.0), rate)
                best = max(best, rate)
            base_runs.append(best)
            ours_runs.append(localconv_images_per_s(name, images, labels, args.batch_size, steps // 2 + 1, 3,
                                                    args.device, args.compile, args.step))
            print(f"{name} round {r + 1}: baseline {best:.0f} img/s, localconv {ours_runs[-1]:.0f} img/s",
                  file=sys.stderr)
        base, ours = statistics.median(base_runs), statistics.median(ours_runs)
        results.append({"model": name, "device": str(device), "batch_size": args.batch_size,
                        "baseline_images_per_s": base, "baseline_by_workers": workers_used,
                        "localconv_images_per_s": ours, "speedup": ours / base,
                        "threads": torch.get_num_threads(), "compile": args.compile, "step": args.step})
    for r in results:
        print(f"{r['model']:<12} baseline {r['baseline_images_per_s']:8.0f} img/s   localconv "
              f"{r['localconv_images_per_s']:8.0f} img/s   speed-up {r['speedup']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"speed-up (smallest over {len(results)} models, {device}): {min(r['speedup'] for r in results):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
