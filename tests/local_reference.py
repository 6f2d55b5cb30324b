"""Reference implementations of the locally connected convolution for the tests (plain autograd).

``naive_local_conv``: an explicit loop over output positions, each one an einsum with its own
(grouped) filter bank; ``unfold_einsum_local_conv2d``: the usual F.unfold + einsum snippet.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from localconv.nn.local_args import output_size


def naive_local_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple,
                     pads: tuple, dilation: tuple, groups: int = 1) -> torch.Tensor:
    """x [N, C, *S], weight [*out, O, C/g, *k], pads (before, after) per dimension."""
    d = x.dim() - 2
    spec = []
    for i in reversed(range(d)):
        spec += [pads[2 * i], pads[2 * i + 1]]
    xp = F.pad(x, spec)
    out, o, cg, kernel = weight.shape[:d], weight.shape[d], weight.shape[d + 1], weight.shape[d + 2:]
    og = o // groups
    ys = torch.zeros(x.shape[0], o, *out, dtype=x.dtype)
    letters = "xyz"[:d]
    for pos in itertools.product(*(range(m) for m in out)):
        index = tuple(slice(p * s, p * s + dl * (k - 1) + 1, dl) for p, s, dl, k in zip(pos, stride, dilation, kernel))
        parts = []
        for g in range(groups):
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg), *index)]  # [N, C/g, *k]
            parts.append(torch.einsum(f"nc{letters},oc{letters}->no", patch, weight[pos][g * og:(g + 1) * og]))
        index = (torch.arange(x.shape[0])[:, None], torch.arange(o)[None, :], *[torch.tensor(p) for p in pos])
        ys = ys.index_put(index, torch.cat(parts, 1))
    if bias is not None:
        ys = ys + (bias.view(o, *[1] * d) if bias.dim() == 1 else bias)
    return ys


def unfold_einsum_local_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int,
                               pad: int) -> torch.Tensor:
    """F.unfold + einsum (stride 1, symmetric padding), weight in localconv's layout."""
    oh, ow, o = weight.shape[:3]
    cols = F.unfold(x, k, padding=pad)  # [N, C*k*k, L]
    y = torch.einsum("nkl,lok->nol", cols, weight.reshape(oh * ow, o, -1)).reshape(x.shape[0], o, oh, ow)
    return y + bias if bias is not None else y


def make_inputs(n: int, c: int, size: tuple, o: int, kernel: tuple, stride: tuple, pads: tuple, dilation: tuple,
                groups: int = 1, bias: str | None = "untied", dtype: torch.dtype = torch.float64, seed: int = 0):
    """(x, weight, bias) leaves requiring grad, for the geometry given."""
    gen = torch.Generator().manual_seed(seed)
    out = output_size(size, kernel, stride, pads, dilation)
    x = torch.randn(n, c, *size, generator=gen, dtype=dtype).requires_grad_()
    w = torch.randn(*out, o, c // groups, *kernel, generator=gen, dtype=dtype).requires_grad_()
    b = None
    if bias is not None:
        shape = (o,) if bias == "shared" else (o, *out)
        b = torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()
    return x, w, b
