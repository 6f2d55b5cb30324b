"""Portable backend of the locally connected layers (any device torch supports): im2col + bmm, 1-D/2-D/3-D.

Per output position l (and group g) the layer is one small GEMM, ``y[l, g] = cols[l, g] @ w[l, g]^T``
with ``cols[l, g]: [N, K]`` (the input window of every image, K = C/groups * prod(kernel)) and
``w[l, g]: [O/groups, K]``, so all positions are one batched matmul over a ``[L*groups, N, K]``
column tensor. That tensor is ``prod(kernel)`` times the input, so it is never built whole:
positions are processed in chunks of whole output "rows" (slabs of the first spatial dimension)
whose columns fit in ``chunk_bytes`` (one reused buffer), in forward and in backward. This bounds the
extra memory to one chunk and, on CPU, also saves time: freshly allocated large buffers cost a page
fault per 4 KiB on first touch, several times the cost of the copy itself.

Inside the chunks, K runs in (*kernel, c) order (not the weight's (c, *kernel)): the columns are then
gathered from a channels-last copy of the input in runs of C/groups contiguous values, and each tap
of the input gradient is a contiguous channels-last slab; the weight rows are permuted per chunk.

These are plain tensor functions (no autograd): :mod:`localconv.nn.local_ops` wraps them.
"""
from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

CPU_CHUNK_BYTES = 8 << 20  # fits in the heap glibc reuses (< 32 MiB mmap threshold) and in L3
SCRATCH_MAX_BYTES = 64 << 20  # the per-thread CPU work buffer kept between calls (see _scratch)
DEVICE_CHUNK_BYTES = 256 << 20  # CUDA: the caching allocator has no page-fault cost; fewer launches


class Geometry(NamedTuple):
    """Static description of one call (all ints); ``d`` spatial dimensions."""

    input_shape: tuple[int, ...]  # N, C, *spatial
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[int, ...]  # (before_0, after_0, before_1, after_1, ...)
    dilation: tuple[int, ...]
    out_size: tuple[int, ...]
    out_channels: int
    groups: int

    @property
    def dims(self) -> int:
        return len(self.kernel)

    @property
    def positions(self) -> int:
        return math.prod(self.out_size)

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    @property
    def k(self) -> int:
        """Columns of all groups together: C * prod(kernel)."""
        return self.input_shape[1] * self.taps

    @property
    def group_k(self) -> int:
        return self.input_shape[1] // self.groups * self.taps


def geometry(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int], pads: Sequence[int],
             dilation: Sequence[int], groups: int) -> Geometry:
    """Geometry from ``x [N, C, *S]`` and ``weight [*out, O, C/groups, *kernel]``."""
    d = len(x_shape) - 2
    return Geometry(tuple(x_shape), tuple(weight_shape[-d:]), tuple(stride), tuple(pads), tuple(dilation),
                    tuple(weight_shape[:d]), int(weight_shape[d]), int(groups))


def channels_last_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last(_3d) when x is (and is not also plain contiguous, e.g. C == 1), else contiguous:
    the layout F.convNd gives its output."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if fmt is not None and x.is_contiguous(memory_format=fmt) and not x.is_contiguous():
        return fmt
    return torch.contiguous_format


def _padded_shape(geo: Geometry) -> tuple[int, ...]:
    """``[N, *padded spatial, C]``."""
    n, c = geo.input_shape[:2]
    spatial = geo.input_shape[2:]
    return (n, *(s + geo.pads[2 * i] + geo.pads[2 * i + 1] for i, s in enumerate(spatial)), c)


def _padded_channels_last(x: torch.Tensor, pads: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """x as a contiguous ``[N, *padded spatial, C]`` tensor, zero padded (into ``out`` if given)."""
    x_cl = x.movedim(1, -1)
    if out is None:
        if not any(pads):
            return x_cl.contiguous()
        spec = [0, 0]
        for dim in reversed(range(len(pads) // 2)):  # F.pad lists the last dimension first
            spec += [pads[2 * dim], pads[2 * dim + 1]]
        return F.pad(x_cl, spec)
    interior = [slice(None)]
    for dim in range(len(pads) // 2):  # zero the borders only, then copy the interior
        before, after, size = pads[2 * dim], pads[2 * dim + 1], out.shape[dim + 1]
        if before:
            out[(slice(None),) * (dim + 1) + (slice(0, before),)].zero_()
        if after:
            out[(slice(None),) * (dim + 1) + (slice(size - after, size),)].zero_()
        interior.append(slice(before, size - after))
    out[tuple(interior)].copy_(x_cl)
    return out


def _row_chunks(geo: Geometry, itemsize: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """Ranges of output rows (first spatial dimension) whose columns take at most ``chunk_bytes``."""
    row_bytes = math.prod(geo.out_size[1:]) * geo.input_shape[0] * geo.k * itemsize
    rows = max(1, chunk_bytes // max(row_bytes, 1))
    for r0 in range(0, geo.out_size[0], rows):
        yield r0, min(r0 + rows, geo.out_size[0])


def _chunk_bytes(device: torch.device, chunk_bytes: int | None) -> int:
    if chunk_bytes is not None:
        return chunk_bytes
    return CPU_CHUNK_BYTES if device.type == "cpu" else DEVICE_CHUNK_BYTES


_scratch_local = threading.local()


def _scratch(like: torch.Tensor, *shapes: Sequence[int]) -> list[torch.Tensor]:
    """Uninitialized work tensors of ``shapes`` (dtype and device of ``like``), never returned to callers.

    On CPU they are views of one buffer per thread and dtype, kept between calls (at most
    ``SCRATCH_MAX_BYTES``; larger requests allocate): a freshly allocated buffer of some MiB costs a
    page fault per 4 KiB on first touch (glibc returns freed heap tops to the system), often more than
    the work done in it. On other devices, plain allocations (the caching allocator already reuses)."""
    numels = [math.prod(shape) for shape in shapes]
    total = sum(numels)
    if like.device.type != "cpu" or total * like.element_size() > SCRATCH_MAX_BYTES:
        return [like.new_empty(tuple(shape)) for shape in shapes]
    buffers = getattr(_scratch_local, "buffers", None)
    if buffers is None:
        buffers = _scratch_local.buffers = {}
    buffer = buffers.get(like.dtype)
    if buffer is None or buffer.numel() < total:
        buffers.pop(like.dtype, None)  # free the old one first
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buffer = buffers[like.dtype] = torch.empty(total, dtype=like.dtype)
    views, offset = [], 0
    for shape, numel in zip(shapes, numels):
        views.append(buffer[offset:offset + numel].view(tuple(shape)))
        offset += numel
    return views


def _gather_columns(xp: torch.Tensor, geo: Geometry, r0: int, r1: int, out: torch.Tensor) -> torch.Tensor:
    """Columns of output rows [r0, r1) into ``out`` ``[(r1-r0)*L', groups, N, K/groups]``."""
    n, c, g = geo.input_shape[0], geo.input_shape[1], geo.groups
    rows, rest = r1 - r0, geo.out_size[1:]
    strides = xp.stride()  # contiguous [N, *padded, C]
    # A strided view of every window: [N, rows, *rest, *kernel, C] (stride and dilation in the strides).
    windows = xp.as_strided(
        (n, rows, *rest, *geo.kernel, c),
        (strides[0], *(s * st for s, st in zip(geo.stride, strides[1:-1])),
         *(dl * st for dl, st in zip(geo.dilation, strides[1:-1])), 1),
        xp.storage_offset() + r0 * geo.stride[0] * strides[1])
    d = geo.dims
    windows = windows.unflatten(-1, (g, c // g))  # [N, rows, *rest, *kernel, g, cg]
    order = (*range(1, d + 1), 2 * d + 1, 0, *range(d + 1, 2 * d + 1), 2 * d + 2)
    source = windows.permute(order)  # [rows, *rest, g, N, *kernel, cg]
    target = out.view(rows, *rest, g, n, *geo.kernel, c // g)
    # One copy per line of the last output dimension: each a copy of few dimensions (the last tap and
    # the channels coalesce into one run when undilated), which TensorIterator does several times
    # faster than one copy of all 2*d+3 dimensions, and cache-friendlier.
    for line in itertools.product(*(range(m) for m in (rows, *rest)[:-1])):
        target[line].copy_(source[line])
    return out


def _weight_columns(weight_rows: torch.Tensor, geo: Geometry, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[rows, *rest, O, C/g, *kernel]`` -> ``[rows*L'*g, O/g, K/g]``, K in (*kernel, c) order (a copy, into
    ``out`` if given: one batched transpose ``[P*O, C/g, taps] -> [P*O, taps, C/g]``)."""
    d, g = geo.dims, geo.groups
    positions = math.prod(weight_rows.shape[:d])
    cg = geo.input_shape[1] // g
    source = weight_rows.reshape(positions * geo.out_channels, cg, geo.taps).transpose(1, 2)
    if source.is_contiguous():  # a weight stored taps-last (see taps_last_weight): no copy
        out = source
    elif out is None:
        out = source.contiguous()
    else:
        out.view(positions * geo.out_channels, geo.taps, cg).copy_(source)
    return out.view(positions * g, geo.out_channels // g, geo.group_k)


def taps_last_order(dims: int) -> tuple[int, ...]:
    """The permutation of a weight ``[*out, O, C/g, *kernel]`` to ``[*out, O, *kernel, C/g]``."""
    return (*range(dims + 1), *range(dims + 2, 2 * dims + 2), dims + 1)


def taps_last_weight(weight: torch.Tensor, dims: int) -> torch.Tensor:
    """A copy of ``weight`` (same shape and values) whose memory is in ``[*out, O, *kernel, C/g]`` order,
    the order of the GEMMs' K: with it, forward and backward skip the weight's per-call transposes
    (``[P*O, C/g, taps] <-> [P*O, taps, C/g]``), and the fused backward returns the weight gradient in
    the same memory order (what autograd keeps for such a parameter)."""
    order = taps_last_order(dims)
    inverse = tuple(order.index(i) for i in range(len(order)))
    return weight.permute(order).contiguous().permute(inverse)


def taps_last_empty(shape: Sequence[int], dims: int, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialized weight of logical ``shape`` ``[*out, O, C/g, *kernel]`` stored taps-last
    (see :func:`taps_last_weight`)."""
    order = taps_last_order(dims)
    inverse = tuple(order.index(i) for i in range(len(order)))
    return torch.empty([shape[i] for i in order], device=device, dtype=dtype).permute(inverse)


def _is_taps_last(weight: torch.Tensor, dims: int) -> bool:
    return weight.permute(taps_last_order(dims)).is_contiguous()


def _chunk_positions(geo: Geometry, chunk_bytes: int | None, device: torch.device, itemsize: int
                     ) -> tuple[list[tuple[int, int]], int]:
    """The row chunks and the largest chunk's number of GEMMs (positions * groups)."""
    chunks = list(_row_chunks(geo, itemsize, _chunk_bytes(device, chunk_bytes)))
    per_row = math.prod(geo.out_size[1:]) * geo.groups
    return chunks, max(r1 - r0 for r0, r1 in chunks) * per_row


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: Geometry,
            memory_format: torch.memory_format, cols: torch.Tensor | None = None,
            chunk_bytes: int | None = None) -> torch.Tensor:
    """``y [N, O, *out]``; bias ``[O, *out]`` (untied) or ``[O]`` (shared); ``cols`` skips the gathering."""
    n, o, g = geo.input_shape[0], geo.out_channels, geo.groups
    per_row = math.prod(geo.out_size[1:])
    chunks, most = _chunk_positions(geo, chunk_bytes, x.device, x.element_size())
    shapes = [(geo.positions * g, n, o // g), (most, o // g, geo.group_k)]
    if cols is None:
        shapes += [(most, n, geo.group_k), _padded_shape(geo)]
    y, w_cols, *rest = _scratch(x, *shapes)
    if cols is None:
        buffer, xp = rest[0], _padded_channels_last(x, geo.pads, rest[1])
    for r0, r1 in chunks:
        l0, l1 = r0 * per_row * g, r1 * per_row * g
        if cols is not None:
            chunk = cols[l0:l1]
        else:
            chunk = _gather_columns(xp, geo, r0, r1, buffer[:l1 - l0])
        torch.bmm(chunk, _weight_columns(weight[r0:r1], geo, w_cols[:l1 - l0]).transpose(1, 2), out=y[l0:l1])
    # [L, g, N, O/g] memory seen as [N, g, O/g, L]
    y_view = y.view(geo.positions, g, n, o // g).permute(2, 1, 3, 0)
    out = torch.empty((n, o, *geo.out_size), dtype=y.dtype, device=y.device, memory_format=memory_format)
    out_view = out.view(n, g, o // g, geo.positions)
    if bias is None:
        out_view.copy_(y_view)
    else:  # added in the copy to the output layout (cheaper than baddbmm's extra pass)
        bias_view = bias.reshape(g, o // g, geo.positions if bias.dim() > 1 else 1)
        torch.add(y_view, bias_view, out=out_view)
    return out


def _grad_rows(grad_out: torch.Tensor, geo: Geometry, scratch: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad_out [N, O, *out]`` as ``[L*g, O/g, N]`` (rows of N contiguous). Both backward GEMMs take it
    as is or transposed (torch copies each matrix of a bmm operand that is neither), and MKL runs both
    faster from this layout than from ``[L*g, N, O/g]``.

    The reversal ``[N, O, L] -> [L, O, N]`` done as one strided copy walks memory with a stride of
    ``O*L`` values in its inner loop (many times slower at N=512); instead: one 2-D transpose
    ``[N, O*L] -> [O*L, N]`` into ``scratch`` (torch's blocked transpose copy), then, with one group, a
    strided view (bmm accepts a leading dimension of L*N), else a copy of runs of N into ``out``."""
    n, o, g = geo.input_shape[0], geo.out_channels, geo.groups
    flat = grad_out.reshape(n, o * geo.positions)
    scratch.view(o * geo.positions, n).copy_(flat.t())
    by_position = scratch.view(g, o // g, geo.positions, n).permute(2, 0, 1, 3)  # [L, g, O/g, N]
    if g == 1:
        return by_position.squeeze(1)
    out.view(geo.positions, g, o // g, n).copy_(by_position)
    return out


def grad_weight(grad_out: torch.Tensor, x: torch.Tensor | None, geo: Geometry, cols: torch.Tensor | None = None,
                chunk_bytes: int | None = None) -> torch.Tensor:
    """Weight gradient ``[*out, O, C/g, *kernel]`` from the input ``x`` (or its saved ``cols``)."""
    return backward(grad_out, x, None, geo, False, True, torch.contiguous_format, cols, chunk_bytes)[1]


def grad_input(grad_out: torch.Tensor, weight: torch.Tensor, geo: Geometry, memory_format: torch.memory_format,
               chunk_bytes: int | None = None) -> torch.Tensor:
    """Input gradient ``[N, C, *S]`` in ``memory_format``."""
    return backward(grad_out, None, weight, geo, True, False, memory_format, None, chunk_bytes)[0]


def backward(grad_out: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor | None, geo: Geometry,
             need_input: bool, need_weight: bool, memory_format: torch.memory_format,
             cols: torch.Tensor | None = None, chunk_bytes: int | None = None
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_input, grad_weight) from the input ``x`` (or the saved ``cols``) and the weight."""
    n, c = geo.input_shape[:2]
    spatial, d, g, o = geo.input_shape[2:], geo.dims, geo.groups, geo.out_channels
    per_row, rest = math.prod(geo.out_size[1:]), geo.out_size[1:]
    before = geo.pads[0::2]
    chunks, most = _chunk_positions(geo, chunk_bytes, grad_out.device, grad_out.element_size())
    gather = need_weight and cols is None
    shapes = [(geo.positions * g, o // g, n), (most, n, geo.group_k), (most, o // g, geo.group_k),
              (geo.positions * o, n)]
    padded = _padded_shape(geo)  # [N, *padded, C]
    # the input gradient accumulates in a [*padded, N, C] grid: the layout of the column gradients'
    # taps ([rows, *rest, N, C]), so that each tap's add runs over contiguous N*C slabs
    shapes += [padded] * int(gather) + [(*padded[1:-1], n, c)] * int(need_input)
    grad_rows, buffer, w_rows, transposed, *grids = _scratch(grad_out, *shapes)
    grad_rows = _grad_rows(grad_out, geo, transposed, grad_rows)
    xp = _padded_channels_last(x, geo.pads, grids[0]) if gather else None
    weight_shape = (*geo.out_size, o, c // g, *geo.kernel)
    # A taps-last weight gets a taps-last gradient, written by the GEMMs in place (no transposes).
    taps_last = need_weight and weight is not None and _is_taps_last(weight, d)
    grad_w = grad_out.new_empty(weight_shape) if need_weight and not taps_last else None
    if taps_last:
        order = taps_last_order(d)
        grad_w_mem = grad_out.new_empty([weight_shape[i] for i in order])
        grad_w = grad_w_mem.permute(tuple(order.index(i) for i in range(len(order))))
        grad_w_rows = grad_w_mem.view(geo.positions * g, o // g, geo.group_k)
    grid = grids[-1].zero_() if need_input else None
    for r0, r1 in chunks:
        l0, l1, rows = r0 * per_row * g, r1 * per_row * g, r1 - r0
        if need_weight:  # w_rows: the weight gradient of the chunk's positions
            chunk = cols[l0:l1] if cols is not None else _gather_columns(xp, geo, r0, r1, buffer[:l1 - l0])
            if taps_last:
                torch.bmm(grad_rows[l0:l1], chunk, out=grad_w_rows[l0:l1])
            else:
                torch.bmm(grad_rows[l0:l1], chunk, out=w_rows[:l1 - l0])
                # [P*O, taps, C/g] -> [P*O, C/g, taps]: one batched transpose
                positions = (l1 - l0) // g
                gw = w_rows[:l1 - l0].view(positions * o, geo.taps, c // g)
                grad_w[r0:r1].view(positions * o, c // g, geo.taps).copy_(gw.transpose(1, 2))
        if need_input:  # w_rows: the weight columns of the chunk's positions
            w_cols = _weight_columns(weight[r0:r1], geo, w_rows[:l1 - l0])
            grad_cols = torch.bmm(grad_rows[l0:l1].transpose(1, 2), w_cols, out=buffer[:l1 - l0])
            taps = grad_cols.view(rows, *rest, g, n, *geo.kernel, c // g)
            for tap in itertools.product(*(range(k) for k in geo.kernel)):
                starts = [tap[0] * geo.dilation[0] + r0 * geo.stride[0],
                          *(t * dl for t, dl in zip(tap[1:], geo.dilation[1:]))]
                index = tuple(slice(s0, s0 + st * (m - 1) + 1, st)
                              for s0, st, m in zip(starts, geo.stride, (rows, *rest)))
                target = grid[index]  # [rows, *rest, N, C]
                source = taps[(Ellipsis, *tap, slice(None))]  # [rows, *rest, g, N, C/g]
                if g == 1:
                    target += source.squeeze(d)
                else:
                    target.unflatten(-1, (g, c // g)).add_(source.transpose(d, d + 1))
    grad_x = None
    if need_input:  # a copy out of the scratch grid
        inner = grid[tuple(slice(b, b + s) for b, s in zip(before, spatial))]  # [*S, N, C]
        grad_x = torch.empty((n, c, *spatial), dtype=grid.dtype, device=grid.device, memory_format=memory_format)
        grad_x.copy_(inner.permute(d, d + 1, *range(d)))
    return grad_x, grad_w
