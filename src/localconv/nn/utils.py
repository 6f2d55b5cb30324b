"""Small argument normalizers shared by the layers in :mod:`localconv.nn`."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 2) -> (3, 2)``. Rejects anything that is not one int or two."""
    if isinstance(v, bool):
        raise TypeError(f"expected an int or an (h, w) pair, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    values = tuple(v)
    if len(values) != 2:
        raise ValueError(f"expected an int or an (h, w) pair, got {v!r}")
    return (int(values[0]), int(values[1]))


def _padding4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Padding as ``(top, bottom, left, right)`` from an int, ``(ph, pw)`` or a 4-tuple."""
    if not isinstance(padding, int) and len(tuple(padding)) == 4:
        top, bottom, left, right = (int(p) for p in padding)
    else:
        ph, pw = _pair(padding)
        top, bottom, left, right = ph, ph, pw, pw
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return (top, bottom, left, right)


def conv_output_size(in_size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    """Windows along one side: ``floor((in + pad_before + pad_after - k) / stride) + 1``."""
    return (in_size + pad_before + pad_after - kernel) // stride + 1


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is (and is not also plain contiguous, e.g. C == 1), else contiguous:
    the layout F.conv2d gives its output."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
