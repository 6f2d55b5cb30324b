"""``LocallyConnected2d``: a convolution whose filters are not shared across positions."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .functional import BACKENDS, local_conv2d
from .utils import _padding4, _pair, conv_output_size


class LocallyConnected2d(nn.Module):
    """Locally connected (unshared-weight) 2-D layer, cuda-convnet's ``type=local``.

    Args:
        in_channels, out_channels: channel counts.
        input_size: (H, W) of the input (int or pair): the number of output positions, hence of
            filter banks, depends on it.
        kernel_size, stride: int or (h, w) pair.
        padding: int, (ph, pw) or (top, bottom, left, right); zeros.
        bias: one bias per output unit (untied: per channel and position).
        init_std: weight init std (cuda-convnet's ``initW``); default ``gain / sqrt(fan_in)`` with
            ``fan_in = in_channels * kh * kw``, the inputs one output unit sees.
        gain: see ``init_std``.
        backend: None (env ``LOCALCONV_LOCAL_BACKEND``, else auto), 'auto', 'portable' or 'triton'.

    Parameters (stable layout): ``weight [out_h, out_w, out_channels, in_channels, kh, kw]``, one
    ordinary conv filter bank per output position; ``bias [out_channels, out_h, out_w]``.
    Output size per side: ``floor((in + pad_before + pad_after - k) / stride) + 1``.
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: int | tuple[int, int],
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | Sequence[int] = 0, bias: bool = True, init_std: float | None = None,
                 gain: float = 1.0, backend: str | None = None) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.kernel_size = _pair(input_size), _pair(kernel_size)
        self.stride, self.padding = _pair(stride), _padding4(padding)
        self.backend = backend
        (ih, iw), (kh, kw), (sh, sw) = self.input_size, self.kernel_size, self.stride
        top, bottom, left, right = self.padding
        self.output_size = (conv_output_size(ih, kh, sh, top, bottom), conv_output_size(iw, kw, sw, left, right))
        oh, ow = self.output_size
        if oh < 1 or ow < 1 or min(kh, kw, sh, sw) < 1:
            raise ValueError(f"input {self.input_size}, kernel {self.kernel_size}, stride {self.stride}, "
                             f"padding {self.padding} leave no output position ({oh}x{ow})")
        self.fan_in = in_channels * kh * kw
        self.init_std = float(init_std) if init_std is not None else gain / math.sqrt(self.fan_in)
        self.weight = nn.Parameter(torch.empty(oh, ow, out_channels, in_channels, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels, oh, ow)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight ~ N(0, init_std^2) (not truncated, as cuda-convnet); bias = 0."""
        nn.init.normal_(self.weight, std=self.init_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, *self.input_size):
            raise ValueError(f"{type(self).__name__}: expected input [N, {self.in_channels}, "
                             f"{self.input_size[0]}, {self.input_size[1]}], got {list(x.shape)}")
        return local_conv2d(x, self.weight, self.bias, self.stride, self.padding, backend=self.backend)

    def extra_repr(self) -> str:
        top, bottom, left, right = self.padding
        padding = (top, left) if (top, left) == (bottom, right) else self.padding
        text = (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={padding}, "
                f"output_size={self.output_size}, weight={list(self.weight.shape)}, bias={self.bias is not None}")
        return text + (f", backend={self.backend!r}" if self.backend is not None else "")
