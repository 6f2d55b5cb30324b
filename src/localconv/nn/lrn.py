"""Fast cross-map local response normalization (TF ``tf.nn.lrn``, cuda-convnet ``cmrnorm``).

    y_c = x_c / (k + alpha/size * sum_{c' in window(c)} x_c'^2) ^ beta

PyTorch's ``nn.LocalResponseNorm`` builds this from a 3-D average pool and a chain of
element-wise ops whose autograd graph keeps several full-size intermediates; on the CPU it
cost more than the convolutions of the TF tutorial model. Here the channel-window sum is
one 1x1 convolution with a fixed 0/1 band matrix (a small GEMM that oneDNN/cuBLAS run at
full speed) and the backward is written out, keeping only the input and the denominator.
The window is ``size`` maps wide, ``size // 2`` before and ``(size - 1) // 2`` after the map
(PyTorch's and TF's convention), clipped at the first and last map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def band_matrix(channels: int, size: int, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[C, C, 1, 1] weight of the 1x1 conv summing channel ``c``'s window: B[c, c'] = 1 if c' in window(c)."""
    c = torch.arange(channels, device=device)
    diff = c[None, :] - c[:, None]  # c' - c
    band = (diff >= -(size // 2)) & (diff <= (size - 1) // 2)
    return band.to(dtype)[:, :, None, None]


class _CrossMapLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, band: torch.Tensor, alpha_n: float, beta: float, k: float) -> torch.Tensor:
        denom = torch.addcmul(torch.full((), k, dtype=x.dtype, device=x.device),
                              F.conv2d(x * x, band), torch.full((), alpha_n, dtype=x.dtype, device=x.device))
        ctx.save_for_backward(x, band, denom)
        ctx.alpha_n, ctx.beta = alpha_n, beta
        return x * denom.pow(-beta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN205
        x, band, denom = ctx.saved_tensors
        scale = denom.pow(-ctx.beta)
        # d y_c / d x_c' = scale_c [c == c'] - 2 beta alpha/n x_c x_c' scale_c / denom_c  [c' in window(c)]
        inner = grad * x * scale / denom
        back = F.conv_transpose2d(inner, band.to(inner.dtype))  # B^T: sums over the c whose window holds c'
        grad_x = grad * scale - (2.0 * ctx.beta * ctx.alpha_n) * x * back
        return grad_x.to(x.dtype), None, None, None, None


def cross_map_lrn(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> torch.Tensor:
    """Functional LRN with PyTorch's argument convention (``alpha`` is divided by ``size``)."""
    band = band_matrix(x.shape[1], size, x.device, x.dtype)
    return _CrossMapLRN.apply(x, band, alpha / size, beta, k)


class CrossMapLRN(nn.LocalResponseNorm):
    """Drop-in, faster ``nn.LocalResponseNorm`` (same arguments, same results)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return cross_map_lrn(x, self.size, self.alpha, self.beta, self.k)
