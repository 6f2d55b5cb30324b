"""cuda-convnet pooling: ``start``/``sizeX``/``stride``/``outputsX`` with clipped border windows.

Output window ``i`` (per axis) covers input positions ``[start + i*stride, start + i*stride + size)``
clipped to the image; max pooling takes the maximum of the in-bounds values, average pooling
divides their sum by the number of in-bounds values (not by ``size**2``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pool_output_size(img_size: int, size: int, stride: int, start: int = 0) -> int:
    """cuda-convnet's default ``outputsX``: ``ceil((img - start - size) / stride) + 1`` (24, 3, 2 -> 12)."""
    return int(math.ceil((img_size - start - size) / stride)) + 1


def window_counts(img_size: int, size: int, stride: int, start: int, outputs: int) -> list[int]:
    """In-bounds positions of each output window along one axis."""
    counts = []
    for i in range(outputs):
        lo = start + i * stride
        counts.append(min(lo + size, img_size) - max(lo, 0))
    return counts


class ConvNetPool(nn.Module):
    """Max or average pooling over square ``size`` windows with cuda-convnet's border rule.

    ``outputs=0`` means as many windows as needed to cover the image (:func:`pool_output_size`).
    ``neuron`` (optional) is applied to the result, as cuda-convnet's ``neuron=`` key on a pool layer.
    """

    def __init__(self, mode: str, size: int, stride: int, img_size: int, start: int = 0, outputs: int = 0,
                 neuron: nn.Module | None = None) -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"pool mode must be 'max' or 'avg', got {mode!r}")
        if size < 1 or stride < 1 or img_size < 1:
            raise ValueError("pool size, stride and image size must be >= 1")
        outputs = outputs or pool_output_size(img_size, size, stride, start)
        if outputs < 1:
            raise ValueError(f"pooling {size}/{stride} from {start} produces no output on a {img_size}-pixel image")
        counts = window_counts(img_size, size, stride, start, outputs)
        if min(counts) <= 0:
            bad = counts.index(min(counts))
            raise ValueError(f"pooling window {bad} lies entirely outside the {img_size}-pixel image")
        self.mode, self.size, self.stride, self.start = mode, size, stride, start
        self.img_size, self.outputs = img_size, outputs
        end = start + (outputs - 1) * stride + size  # one past the last position any window reads
        self._crop = (max(start, 0), min(end, img_size))
        self._pad = (max(-start, 0), max(end - img_size, 0))
        count = torch.tensor(counts, dtype=torch.float32)
        # in-bounds count of every output window (exact small integers); derived from the shape, not saved
        self.register_buffer("count", torch.outer(count, count), persistent=False)
        self.neuron = neuron if neuron is not None else nn.Identity()

    def output_size(self) -> int:
        return self.outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._crop
        if (lo, hi) != (0, x.shape[-1]):
            x = x[..., lo:hi, lo:hi]
        before, after = self._pad
        if self.mode == "max":
            if before or after:  # out-of-image positions must never win the max
                x = F.pad(x, (before, after, before, after), value=float("-inf"))
            y = F.max_pool2d(x, self.size, self.stride)
        else:
            if before or after:
                x = F.pad(x, (before, after, before, after))
            if torch.onnx.is_in_onnx_export():
                # torch's ONNX exporter drops divisor_override (AveragePool has none): the window sum is the
                # plain mean times size**2 there; eager and torch.export keep the exact sum below
                total = F.avg_pool2d(x, self.size, self.stride) * float(self.size * self.size)
            else:
                total = F.avg_pool2d(x, self.size, self.stride, divisor_override=1)
            y = total / self.count.to(x.dtype)
        return self.neuron(y)

    def extra_repr(self) -> str:
        return (f"{self.mode}, size={self.size}, stride={self.stride}, start={self.start}, "
                f"{self.img_size}->{self.outputs}")
