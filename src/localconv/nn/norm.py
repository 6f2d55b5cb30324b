"""cuda-convnet's normalization layers: ``cmrnorm``, ``rnorm`` and ``cnorm``.

All three compute ``y = x / (1 + scale' * S) ** pow`` where ``S`` sums squares over a window
that is clipped at the border (out-of-range terms contribute nothing, while the divisor in
``scale'`` stays fixed):

* :class:`CrossMapNorm` (``cmrnorm``): ``S`` over ``size`` neighbouring maps
  ``f - size//2 .. f - size//2 + size - 1``, ``scale' = scale / size``;
* :class:`ResponseNorm` (``rnorm``): ``S`` over a ``size x size`` spatial window within the map
  (same offsets per axis), ``scale' = scale / size**2``;
* :class:`ContrastNorm` (``cnorm``): like ``rnorm`` but ``S`` sums ``d**2`` with ``d = x - m`` where
  ``m`` is, per pixel, the mean of the in-bounds values of that pixel's own window (cuda-convnet's
  ``meanDiffs``); the numerator stays ``x``, as in cuda-convnet.

``scale`` is the value written in the cfg file (cuda-convnet divides it by ``size`` or ``size**2``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lrn import cross_map_lrn


def _check(size: int, scale: float, power: float) -> None:
    if size < 1:
        raise ValueError(f"normalization size must be >= 1, got {size}")
    if scale < 0 or power < 0:
        raise ValueError(f"normalization scale and pow must be >= 0, got {scale}, {power}")


def _spatial_window_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over the clipped ``size x size`` window starting ``size//2`` before each position."""
    before, after = size // 2, size - 1 - size // 2
    x = F.pad(x, (before, after, before, after))
    if torch.onnx.is_in_onnx_export():
        # torch's ONNX exporter drops divisor_override (AveragePool has none): the plain mean of the padded
        # windows times size**2 there; eager and torch.export keep the exact sum below
        return F.avg_pool2d(x, size, stride=1) * float(size * size)
    return F.avg_pool2d(x, size, stride=1, divisor_override=1)


def _window_counts(length: int, size: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device)
    lo = (pos - size // 2).clamp(min=0)
    hi = (pos - size // 2 + size).clamp(max=length)
    return (hi - lo).to(torch.float32)


class CrossMapNorm(nn.Module):
    """``cmrnorm``: response normalization across ``size`` adjacent maps.

    ``blocked=True`` (cuda-convnet's ``blocked=1``) uses the non-overlapping blocks of ``size`` maps
    ``[size * (f // size), size * (f // size) + size)`` instead of windows centred on each map.
    """

    def __init__(self, size: int, scale: float, power: float, blocked: bool = False,
                 neuron: nn.Module | None = None) -> None:
        super().__init__()
        _check(size, scale, power)
        self.size, self.scale, self.power, self.blocked = size, float(scale), float(power), blocked
        self.neuron = neuron if neuron is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blocked:
            # Same clipped window (size//2 before) and fixed alpha/size as PyTorch's LRN; the fused
            # version is faster and keeps less for backward.
            y = cross_map_lrn(x, self.size, alpha=self.scale, beta=self.power, k=1.0)
        else:
            n, c, h, w = x.shape
            blocks = -(-c // self.size)
            sq = F.pad(x * x, (0, 0, 0, 0, 0, blocks * self.size - c))
            sums = sq.view(n, blocks, self.size, h, w).sum(dim=2, keepdim=True)
            sums = sums.expand(n, blocks, self.size, h, w).reshape(n, blocks * self.size, h, w)[:, :c]
            y = x * (1.0 + (self.scale / self.size) * sums).pow(-self.power)
        return self.neuron(y)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, pow={self.power}" + (", blocked" if self.blocked else "")


class ResponseNorm(nn.Module):
    """``rnorm``: response normalization over a ``size x size`` spatial window within each map."""

    def __init__(self, size: int, scale: float, power: float, neuron: nn.Module | None = None) -> None:
        super().__init__()
        _check(size, scale, power)
        self.size, self.scale, self.power = size, float(scale), float(power)
        self.neuron = neuron if neuron is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sums = _spatial_window_sum(x * x, self.size)
        y = x * (1.0 + (self.scale / self.size ** 2) * sums).pow(-self.power)
        return self.neuron(y)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, pow={self.power}"


class ContrastNorm(ResponseNorm):
    """``cnorm``: like ``rnorm`` on each pixel's deviation from its local (in-bounds) mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        count = torch.outer(_window_counts(h, self.size, x.device), _window_counts(w, self.size, x.device))
        mean = _spatial_window_sum(x, self.size) / count.to(x.dtype)
        diff = x - mean
        sums = _spatial_window_sum(diff * diff, self.size)
        y = x * (1.0 + (self.scale / self.size ** 2) * sums).pow(-self.power)
        return self.neuron(y)
