"""``LocallyConnected2d``: a convolution whose filters are not shared across positions."""
from __future__ import annotations

import math

import torch
from torch import nn

from .functional import _pair, local_conv2d


class LocallyConnected2d(nn.Module):
    """Locally connected layer (PLACEHOLDER: the layer issue completes it).

    weight: [out_h, out_w, out_channels, in_channels, kh, kw]; bias: [out_channels, out_h, out_w].
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: int | tuple[int, int],
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, bias: bool = True, init_std: float | None = None,
                 gain: float = 1.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.kernel_size = _pair(input_size), _pair(kernel_size)
        self.stride, self.padding = _pair(stride), _pair(padding)
        (ih, iw), (kh, kw), (sh, sw), (ph, pw) = self.input_size, self.kernel_size, self.stride, self.padding
        self.output_size = ((ih + 2 * ph - kh) // sh + 1, (iw + 2 * pw - kw) // sw + 1)
        oh, ow = self.output_size
        self.weight = nn.Parameter(torch.empty(oh, ow, out_channels, in_channels, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels, oh, ow)) if bias else None
        self.init_std = init_std if init_std is not None else gain / math.sqrt(in_channels * kh * kw)
        nn.init.normal_(self.weight, std=self.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_conv2d(x, self.weight, self.bias, self.stride, self.padding)
