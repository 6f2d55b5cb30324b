"""Whole-batch preprocessing and augmentation on the device (no per-image Python loop).

Images stay uint8 [N, 3, 32, 32] on the device; a batch is cropped and flipped with
one gather, converted to float, and normalized as the model's :class:`InputSpec` says.
All randomness of an epoch is drawn up front from a generator seeded by (seed, epoch)
(:func:`draw_epoch_plan`), so any step of any epoch can be reproduced exactly: that is
what makes ``--resume`` exact, also from a mid-epoch checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .input_spec import InputSpec

# TF tutorial photometric ranges (0..255 pixel scale): random_brightness(max_delta=63),
# random_contrast(lower=0.2, upper=1.8).
BRIGHTNESS_MAX_DELTA = 63.0
CONTRAST_RANGE = (0.2, 1.8)


@dataclass
class EpochPlan:
    """The random choices of one training epoch, one row per image in visiting order."""

    order: torch.Tensor       # int64 [N] permutation of the training set
    offsets: torch.Tensor     # int64 [N, 2] crop top/left
    flips: torch.Tensor       # bool [N]
    brightness: torch.Tensor  # float [N] added delta
    contrast: torch.Tensor    # float [N] contrast factor

    def to(self, device: torch.device | str) -> "EpochPlan":
        return EpochPlan(*(t.to(device, non_blocking=True) for t in
                           (self.order, self.offsets, self.flips, self.brightness, self.contrast)))

    def batch(self, start: int, stop: int) -> "EpochPlan":
        return EpochPlan(self.order[start:stop], self.offsets[start:stop], self.flips[start:stop],
                         self.brightness[start:stop], self.contrast[start:stop])


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct 63-bit seed for every (seed, epoch) pair."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def draw_epoch_plan(n: int, spec: InputSpec, seed: int, epoch: int, image_size: int = 32,
                    max_shift: int | None = None) -> EpochPlan:
    """Draw one epoch's shuffling and augmentation on the CPU (identical on every device).

    Crops lie anywhere in the image, or with ``max_shift`` within that many pixels of the centre crop
    (the test view) in each direction."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=gen)
    max_off = image_size - spec.crop
    if max_shift is None or 2 * max_shift >= max_off:
        offsets = torch.randint(0, max_off + 1, (n, 2), generator=gen)
    else:
        offsets = max_off // 2 - max_shift + torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if spec.flip else torch.zeros(n, dtype=torch.bool)
    if spec.photometric:
        brightness = (torch.rand(n, generator=gen) * 2 - 1) * BRIGHTNESS_MAX_DELTA
        lo, hi = CONTRAST_RANGE
        contrast = lo + torch.rand(n, generator=gen) * (hi - lo)
    else:
        brightness, contrast = torch.zeros(n), torch.ones(n)
    return EpochPlan(order, offsets, flips, brightness, contrast)


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Per-image crops of side ``size`` at ``offsets`` (top, left), mirrored where ``flips``; one gather."""
    b, c = images.shape[:2]
    ar = torch.arange(size, device=images.device)
    rows = offsets[:, 0:1] + ar  # [B, size]
    cols = torch.where(flips[:, None], offsets[:, 1:2] + (size - 1) - ar, offsets[:, 1:2] + ar)
    bi = torch.arange(b, device=images.device)[:, None, None, None]
    ci = torch.arange(c, device=images.device)[None, :, None, None]
    return images[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def standardize(x: torch.Tensor) -> torch.Tensor:
    """TF ``per_image_standardization``: (x - mean) / max(std, 1/sqrt(num_elements)), per image."""
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(n ** -0.5)


def normalize(x: torch.Tensor, spec: InputSpec, mean_crop: torch.Tensor | None) -> torch.Tensor:
    if spec.normalize == "standardize":
        return standardize(x)
    if spec.normalize == "pixel_mean":
        if mean_crop is None:
            raise ValueError("model needs a pixel mean but none was given")
        return x - mean_crop
    return x


def centre_mean(pixel_mean: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor | None:
    """The centre ``size`` x ``size`` patch of the per-pixel mean [3, 32, 32], as [1, 3, size, size].

    cuda-convnet (convdata.py) subtracts this one patch, never flipped, from every random crop, mirrored
    crop and test view -- not each crop's own (mirrored) window of the mean (REFERENCE §3)."""
    if pixel_mean is None:
        return None
    top = (pixel_mean.shape[-1] - size) // 2
    return pixel_mean.to(device, torch.float32)[None, :, top:top + size, top:top + size]


def train_batch(images: torch.Tensor, plan: EpochPlan, spec: InputSpec,
                pixel_mean: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B,3,32,32] -> float [B,3,crop,crop]: crop, flip, (brightness, contrast), normalize."""
    x = crop_flip(images, plan.offsets, plan.flips, spec.crop).float()
    if spec.photometric:
        x = x + plan.brightness.to(x)[:, None, None, None]
        channel_mean = x.mean(dim=(2, 3), keepdim=True)
        x = (x - channel_mean) * plan.contrast.to(x)[:, None, None, None] + channel_mean
    return normalize(x, spec, centre_mean(pixel_mean, spec.crop, x.device))


def view_offsets(spec: InputSpec, view: str, image_size: int = 32) -> tuple[int, int]:
    """Crop origin of a named test view: centre, tl, tr, bl, br."""
    m = image_size - spec.crop
    return {"centre": (m // 2, m // 2), "tl": (0, 0), "tr": (0, m), "bl": (m, 0), "br": (m, m)}[view]


TEN_VIEWS = [(v, f) for f in (False, True) for v in ("centre", "tl", "tr", "bl", "br")]


def eval_batch(images: torch.Tensor, spec: InputSpec, pixel_mean: torch.Tensor | None = None,
               view: str = "centre", flip: bool = False) -> torch.Tensor:
    """Deterministic test-time view: a centre (or corner) crop, optionally mirrored, normalized."""
    b = images.shape[0]
    off = torch.tensor(view_offsets(spec, view, images.shape[-1]), device=images.device).expand(b, 2)
    flips = torch.full((b,), flip, dtype=torch.bool, device=images.device)
    x = crop_flip(images, off, flips, spec.crop).float()
    return normalize(x, spec, centre_mean(pixel_mean, spec.crop, x.device))
