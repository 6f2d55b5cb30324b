"""Argument normalization and checks of the locally connected layers (1-D/2-D/3-D), ``nn.ConvNd`` style.

Every bad value (a wrong type included: a float size, a string stride) raises ``ValueError`` naming
the argument and the value.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch


def is_int(v: object) -> bool:
    """An integer, Python's or numpy's (``numbers.Integral``, as ``nn.Conv2d`` accepts), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


_is_int = is_int


def _listed(value: object) -> object:
    """A 1-D numpy integer array as a list of its ints (other values as they are)."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and np.issubdtype(value.dtype, np.integer):
        return value.tolist()
    return value


def ntuple(value: int | Sequence[int], dims: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """``3 -> (3,) * dims``; a sequence of ``dims`` ints as is (a 1-D numpy integer array too, as
    ``nn.Conv2d`` takes); each >= ``minimum``."""
    value = _listed(value)
    if _is_int(value):
        values = (value,) * dims
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) != dims:
            raise ValueError(f"{name} must be an int or {dims} ints, got {value!r}")
    else:
        raise ValueError(f"{name} must be an int or a tuple of {dims} ints, got {value!r}")
    for v in values:
        if not _is_int(v):
            raise ValueError(f"{name} must hold ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in values)


def padding_pairs(padding: int | str | Sequence[int], dims: int, kernel: Sequence[int], stride: Sequence[int],
                  dilation: Sequence[int]) -> tuple[int, ...]:
    """Padding as ``(before_0, after_0, before_1, after_1, ...)``.

    Accepts an int, ``dims`` ints (symmetric per dimension), ``2 * dims`` ints (before/after per
    dimension: ``(top, bottom, left, right)`` in 2-D), ``"valid"`` (none) or ``"same"`` (output size =
    input size, stride 1 only; an odd total puts the extra zero after, as ``F.conv2d`` does).
    """
    padding = _listed(padding)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * dims)
        if padding != "same":
            raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' needs stride 1 (as nn.Conv{dims}d), got stride {tuple(stride)}")
        pairs: list[int] = []
        for k, dl in zip(kernel, dilation):
            total = dl * (k - 1)
            pairs += [total // 2, total - total // 2]
        return tuple(pairs)
    if isinstance(padding, Sequence) and len(padding) == 2 * dims and dims > 0 and len(padding) != dims:
        values = ntuple(padding, 2 * dims, "padding", minimum=0)
        return values
    sym = ntuple(padding, dims, "padding", minimum=0)
    return tuple(v for p in sym for v in (p, p))


def output_size(input_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pads: Sequence[int],
                dilation: Sequence[int]) -> tuple[int, ...]:
    """Windows per dimension: ``floor((in + before + after - dilation*(k-1) - 1) / stride) + 1``."""
    return tuple((n + pads[2 * i] + pads[2 * i + 1] - dl * (k - 1) - 1) // s + 1
                 for i, (n, k, s, dl) in enumerate(zip(input_size, kernel, stride, dilation)))


def check_init_std(init_std: float | None, gain: float) -> None:
    for name, value in (("init_std", init_std), ("gain", gain)):
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dims: int,
               stride: tuple[int, ...], pads: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> None:
    """Raise ValueError stating the expected and actual shapes when they do not fit together."""
    names = ("out_l", "out_h, out_w", "out_d, out_h, out_w")[dims - 1] if dims <= 3 else "*out"
    if weight.dim() != 2 + 2 * dims:
        raise ValueError(f"weight must be [{names}, out_channels, in_channels/groups, *kernel] "
                         f"({2 + 2 * dims} dimensions), got shape {list(weight.shape)}")
    out, o, cg, kernel = tuple(weight.shape[:dims]), weight.shape[dims], weight.shape[dims + 1], weight.shape[dims + 2:]
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if o % groups:
        raise ValueError(f"groups={groups} must divide out_channels={o}")
    if x.dim() != dims + 2 or x.shape[1] != cg * groups:
        spatial = ", ".join("HW"[:dims] if dims == 2 else ("L" if dims == 1 else "DHW"))
        raise ValueError(f"expected input [N, {cg * groups}, {spatial}] (in_channels from the weight), "
                         f"got {list(x.shape)}")
    expected = output_size(x.shape[2:], kernel, stride, pads, dilation)
    if expected != out:
        raise ValueError(f"input {list(x.shape)} with kernel {tuple(kernel)}, stride {stride}, dilation {dilation}, "
                         f"padding (before, after per dimension)={pads} gives {'x'.join(map(str, expected))} "
                         f"output positions, but the weight {list(weight.shape)} has {'x'.join(map(str, out))}")
    if bias is not None and tuple(bias.shape) not in ((o, *out), (o,)):
        raise ValueError(f"expected bias [{', '.join(map(str, (o, *out)))}] (untied) or [{o}] (shared), "
                         f"got {list(bias.shape)}")
