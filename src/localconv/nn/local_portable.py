"""Portable backend of the locally connected layer (any device torch supports): im2col + bmm.

Per output position l the layer is one small GEMM, ``y[l] = cols[l] @ w[l]^T`` with
``cols[l]: [N, K]`` (the input window of every image) and ``w[l]: [O, K]``, so all positions are one
batched matmul over a ``[L, N, K]`` column tensor. That tensor is ``kh*kw`` times the input, so it is
never built whole: positions are processed in chunks of whole output rows whose columns fit in
``chunk_bytes`` (one reused buffer), in forward and in backward. This bounds the extra memory to
one chunk and, on CPU, also saves time: freshly allocated large buffers cost a page fault per 4 KiB
on first touch, several times the cost of the copy itself.

Inside the chunks, K runs in (kh, kw, c) order (not the weight's (c, kh, kw)): the columns are then
gathered from a channels-last copy of the input in runs of C contiguous values, and each tap of
the input gradient is a contiguous [N, OH, OW, C] slab; the weight rows are permuted per chunk.

Backward keeps only the input (and rebuilds each chunk's columns): measured against keeping all
columns in docs/local_layer.md.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

CPU_CHUNK_BYTES = 8 << 20  # fits in the heap glibc reuses (< 32 MiB mmap threshold) and in L3
DEVICE_CHUNK_BYTES = 256 << 20  # CUDA: the caching allocator has no page-fault cost; fewer launches


class Geometry(NamedTuple):
    """Static description of one call (all ints)."""

    input_shape: tuple[int, int, int, int]  # N, C, H, W
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    out_hw: tuple[int, int]
    out_channels: int

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def k(self) -> int:
        return self.input_shape[1] * self.kernel[0] * self.kernel[1]


def _padded_nhwc(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """x as a contiguous ``[N, H + top + bottom, W + left + right, C]`` tensor, zero padded."""
    top, bottom, left, right = pads
    x_nhwc = x.permute(0, 2, 3, 1)
    return F.pad(x_nhwc, (0, 0, left, right, top, bottom)) if any(pads) else x_nhwc.contiguous()


def _row_chunks(geo: Geometry, itemsize: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """Ranges of output rows whose columns take at most ``chunk_bytes`` (at least one row)."""
    row_bytes = geo.out_hw[1] * geo.input_shape[0] * geo.k * itemsize
    rows = max(1, chunk_bytes // max(row_bytes, 1))
    for r0 in range(0, geo.out_hw[0], rows):
        yield r0, min(r0 + rows, geo.out_hw[0])


def _chunk_bytes(device: torch.device, chunk_bytes: int | None) -> int:
    if chunk_bytes is not None:
        return chunk_bytes
    return CPU_CHUNK_BYTES if device.type == "cpu" else DEVICE_CHUNK_BYTES


def _gather_columns(xp: torch.Tensor, geo: Geometry, r0: int, r1: int, out: torch.Tensor) -> torch.Tensor:
    """Columns of output rows [r0, r1) into ``out`` ``[(r1-r0)*OW, N, K]``, K in (kh, kw, c) order."""
    (kh, kw), (sh, sw), ow = geo.kernel, geo.stride, geo.out_hw[1]
    rows = xp[:, r0 * sh:(r1 - 1) * sh + kh]
    windows = rows.unfold(1, kh, sh).unfold(2, kw, sw)[:, :r1 - r0, :ow]  # [N, rows, OW, C, kh, kw]
    out.view(r1 - r0, ow, xp.shape[0], kh, kw, xp.shape[3]).copy_(windows.permute(1, 2, 0, 4, 5, 3))
    return out


def _weight_columns(weight_rows: torch.Tensor) -> torch.Tensor:
    """``[rows, OW, O, C, kh, kw]`` -> ``[rows*OW, O, K]`` with K in (kh, kw, c) order (a copy)."""
    rows, ow, o, c, kh, kw = weight_rows.shape
    return weight_rows.permute(0, 1, 2, 4, 5, 3).reshape(rows * ow, o, kh * kw * c)


def columns(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """All columns ``[L, N, K]`` at once (for the keep-columns variant of backward)."""
    xp = _padded_nhwc(x, geo.pads)
    out = x.new_empty((geo.positions, geo.input_shape[0], geo.k))
    return _gather_columns(xp, geo, 0, geo.out_hw[0], out)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: Geometry,
            memory_format: torch.memory_format, cols: torch.Tensor | None = None,
            chunk_bytes: int | None = None) -> torch.Tensor:
    """``y [N, O, OH, OW]``; ``cols`` (from :func:`columns`) skips the gathering."""
    n, ow, o = geo.input_shape[0], geo.out_hw[1], geo.out_channels
    y = x.new_empty((geo.positions, n, o))
    xp = _padded_nhwc(x, geo.pads) if cols is None else None
    buffer = None
    for r0, r1 in _row_chunks(geo, x.element_size(), _chunk_bytes(x.device, chunk_bytes)):
        l0, l1 = r0 * ow, r1 * ow
        if cols is not None:
            chunk = cols[l0:l1]
        else:
            buffer = buffer if buffer is not None else x.new_empty((l1 - l0, n, geo.k))
            chunk = _gather_columns(xp, geo, r0, r1, buffer[:l1 - l0])
        torch.bmm(chunk, _weight_columns(weight[r0:r1]).transpose(1, 2), out=y[l0:l1])
    y_nchw = y.permute(1, 2, 0).reshape(n, o, *geo.out_hw)  # a view: [L, N, O] memory
    out = torch.empty((n, o, *geo.out_hw), dtype=y.dtype, device=y.device, memory_format=memory_format)
    # The bias is added in the copy to the output layout (cheaper than baddbmm's extra pass).
    return torch.add(y_nchw, bias, out=out) if bias is not None else out.copy_(y_nchw)


def backward(grad_out: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor, geo: Geometry,
             need_input: bool, need_weight: bool, memory_format: torch.memory_format,
             cols: torch.Tensor | None = None, chunk_bytes: int | None = None
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_input, grad_weight) from the saved input ``x`` (or the saved ``cols``)."""
    n, c, h, w = geo.input_shape
    (kh, kw), (sh, sw), (oh, ow), o = geo.kernel, geo.stride, geo.out_hw, geo.out_channels
    top, bottom, left, right = geo.pads
    grad_lno = grad_out.permute(2, 3, 0, 1).reshape(geo.positions, n, o)
    xp = _padded_nhwc(x, geo.pads) if need_weight and cols is None else None
    grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight else None
    grid = grad_out.new_zeros((n, h + top + bottom, w + left + right, c)) if need_input else None
    buffer = grad_w_rows = None
    for r0, r1 in _row_chunks(geo, grad_out.element_size(), _chunk_bytes(grad_out.device, chunk_bytes)):
        l0, l1, rows = r0 * ow, r1 * ow, r1 - r0
        if buffer is None:
            buffer = grad_out.new_empty((l1 - l0, n, geo.k))  # columns, then their gradient
            grad_w_rows = grad_out.new_empty((l1 - l0, o, geo.k)) if need_weight else None
        if need_weight:
            chunk = cols[l0:l1] if cols is not None else _gather_columns(xp, geo, r0, r1, buffer[:l1 - l0])
            torch.bmm(grad_lno[l0:l1].transpose(1, 2), chunk, out=grad_w_rows[:l1 - l0])
            grad_w[r0:r1] = grad_w_rows[:l1 - l0].view(rows, ow, o, kh, kw, c).permute(0, 1, 2, 5, 3, 4)
        if need_input:
            grad_cols = torch.bmm(grad_lno[l0:l1], _weight_columns(weight[r0:r1]), out=buffer[:l1 - l0])
            taps = grad_cols.view(rows, ow, n, kh, kw, c)
            for u in range(kh):
                for v in range(kw):
                    top_row = r0 * sh + u
                    grid[:, top_row:top_row + sh * (rows - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw] += (
                        taps[:, :, :, u, v].permute(2, 0, 1, 3))
    grad_x = None
    if need_input:
        grad_x = grid[:, top:top + h, left:left + w].permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
    return grad_x, grad_w


def geometry(x_shape: Sequence[int], weight_shape: Sequence[int], stride: tuple[int, int],
             pads: tuple[int, int, int, int]) -> Geometry:
    oh, ow, o, _, kh, kw = weight_shape
    n, c, h, w = x_shape
    return Geometry((n, c, h, w), (kh, kw), stride, pads, (oh, ow), o)
