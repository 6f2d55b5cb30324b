"""Functional form of the locally connected (unshared-weight) 2-D convolution.

PLACEHOLDER portable implementation (unfold + batched matmul); the layer issue
replaces it with the memory-lean autograd Function and the Triton backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def local_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0) -> torch.Tensor:
    """y[n, o, i, j] = sum_{c,u,v} weight[i, j, o, c, u, v] * xpad[n, c, i*s+u, j*s+v] + bias[o, i, j].

    weight: [out_h, out_w, out_channels, in_channels, kh, kw]; bias: [out_channels, out_h, out_w].
    padding may be an int, (ph, pw), or (top, bottom, left, right).
    """
    oh, ow, o, c, kh, kw = weight.shape
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, bottom, left, right = padding
        x = F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    cols = F.unfold(x, (kh, kw), padding=_pair(padding), stride=_pair(stride))  # [N, C*kh*kw, L]
    n = x.shape[0]
    cols = cols.permute(2, 0, 1)  # [L, N, K]
    w = weight.reshape(oh * ow, o, c * kh * kw).transpose(1, 2)  # [L, K, O]
    y = torch.bmm(cols, w)  # [L, N, O]
    y = y.permute(1, 2, 0).reshape(n, o, oh, ow)
    if bias is not None:
        y = y + bias
    return y
