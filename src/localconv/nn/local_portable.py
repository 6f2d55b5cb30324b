"""Portable backend of the locally connected layers (any device torch supports): im2col + bmm, 1-D/2-D/3-D.

Per output position l (and group g) the layer is one small GEMM, ``y[l, g] = cols[l, g] @ w[l, g]^T``
with ``cols[l, g]: [N, K]`` (the input window of every image, K = C/groups * prod(kernel)) and
``w[l, g]: [O/groups, K]``, so all positions are one batched matmul over a ``[L*groups, N, K]``
column tensor. That tensor is ``prod(kernel)`` times the input, so it is never built whole: the
forward gathers only the windows along the dimensions after the first (``prod(kernel[1:])`` times the
input, see :func:`_folded_products`) or, grouped or dilated along the first dimension, full columns
for chunks of whole output "rows" (slabs of the first spatial dimension), in both cases into one
reused buffer of at most ``chunk_bytes``. This bounds the extra memory and, on CPU, also saves time:
freshly allocated large buffers cost a page fault per 4 KiB on first touch, several times the cost
of the copy itself. Where its GEMMs are large enough, the backward builds no columns at all: it
splits K by kernel tap, where every GEMM operand is a strided view, and computes the input gradient
per input row (see :func:`backward`); else it gathers columns in chunks as well.

K runs in (*kernel, c) order (not the weight's (c, *kernel)): the columns are then gathered from a
channels-last copy of the input in runs of C/groups contiguous values, and each tap's input (and
input gradient) is a channels-last slab; the weight rows are permuted per chunk unless the weight
is stored taps-last (see :func:`taps_last_weight`: the eager autograd path makes such a copy of a
contiguous weight once per forward, for the forward and its backward; the user's parameter stays contiguous).

These are plain tensor functions (no autograd): :mod:`localconv.nn.local_ops` wraps them.
"""
from __future__ import annotations

import functools
import itertools
import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

CPU_CHUNK_BYTES = 8 << 20  # fits in the heap glibc reuses (< 32 MiB mmap threshold) and in L3
SCRATCH_MAX_BYTES = 64 << 20  # the per-thread CPU work buffer kept between calls (see _scratch)
DEVICE_CHUNK_BYTES = 256 << 20  # CUDA: the caching allocator has no page-fault cost; fewer launches
TAP_GEMM_MIN_MACS = 1 << 19  # backward per-tap GEMMs from this size on, columns below (see _tap_gemms)


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


def padded_shape(geo: Geometry) -> tuple[int, ...]:
    """``[N, *padded spatial, C]``: the padded channels-last input both passes read."""
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


class _ThreadBuffers:
    """One thread's scratch buffers (``by_dtype``), weakly registered so that :func:`release_scratch` reaches
    every thread's and a finished thread's go with it."""

    def __init__(self) -> None:
        self.by_dtype: dict[torch.dtype, torch.Tensor] = {}


_scratch_local = threading.local()
_scratch_registry: "weakref.WeakSet[_ThreadBuffers]" = weakref.WeakSet()  # every live thread's buffers
_scratch_lock = threading.Lock()


def scratch_bytes() -> int:
    """Bytes held by the CPU scratch buffers of all live threads (kept between calls, see :func:`_scratch`)."""
    with _scratch_lock:
        return sum(b.numel() * b.element_size()
                   for buffers in list(_scratch_registry) for b in buffers.by_dtype.values())


def release_scratch() -> int:
    """Free the CPU scratch buffers kept between calls, of every thread; returns the bytes released. A
    call running meanwhile keeps its own buffer alive until it returns; the next call allocates again."""
    with _scratch_lock:
        released = 0
        for buffers in list(_scratch_registry):
            released += sum(b.numel() * b.element_size() for b in buffers.by_dtype.values())
            buffers.by_dtype.clear()
    return released


def _scratch(like: torch.Tensor, *shapes: Sequence[int]) -> list[torch.Tensor]:
    """Uninitialized work tensors of ``shapes`` (dtype and device of ``like``), never returned to callers.

    On CPU they are views of one buffer per thread and dtype, kept between calls (at most
    ``SCRATCH_MAX_BYTES`` per dtype; larger requests allocate): a freshly allocated buffer of some MiB
    costs a page fault per 4 KiB on first touch (glibc returns freed heap tops to the system), often more
    than the work done in it. The buffer of a thread is freed when the thread ends, or by
    :func:`release_scratch`. On other devices, plain allocations (the caching allocator already reuses)."""
    numels = [math.prod(shape) for shape in shapes]
    total = sum(numels)
    if like.device.type != "cpu" or total * like.element_size() > SCRATCH_MAX_BYTES:
        return [like.new_empty(tuple(shape)) for shape in shapes]
    buffers = getattr(_scratch_local, "buffers", None)
    if buffers is None:
        buffers = _scratch_local.buffers = _ThreadBuffers()
        with _scratch_lock:
            _scratch_registry.add(buffers)
    buffers = buffers.by_dtype
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


def input_windows(xp: torch.Tensor, geo: Geometry, r0: int, r1: int) -> torch.Tensor:
    """A strided view of the input windows of output rows [r0, r1), ``[N, rows, *out[1:], *kernel, g, C/g]``,
    from the padded channels-last input ``xp`` (stride and dilation in the strides)."""
    n, c, g = geo.input_shape[0], geo.input_shape[1], geo.groups
    strides = xp.stride()  # contiguous [N, *padded, C]
    view = xp.as_strided(
        (n, r1 - r0, *geo.out_size[1:], *geo.kernel, c),
        (strides[0], *(s * st for s, st in zip(geo.stride, strides[1:-1])),
         *(dl * st for dl, st in zip(geo.dilation, strides[1:-1])), 1),
        xp.storage_offset() + r0 * geo.stride[0] * strides[1])
    return view.unflatten(-1, (g, c // g))


def _gather_columns(xp: torch.Tensor, geo: Geometry, r0: int, r1: int, out: torch.Tensor) -> torch.Tensor:
    """Columns of output rows [r0, r1) into ``out`` ``[(r1-r0)*L', groups, N, K/groups]``."""
    n, c, g = geo.input_shape[0], geo.input_shape[1], geo.groups
    rows, rest = r1 - r0, geo.out_size[1:]
    d = geo.dims
    windows_view = input_windows(xp, geo, r0, r1)  # [N, rows, *rest, *kernel, g, cg]
    order = (*range(1, d + 1), 2 * d + 1, 0, *range(d + 1, 2 * d + 1), 2 * d + 2)
    source = windows_view.permute(order)  # [rows, *rest, g, N, *kernel, cg]
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


def taps_last_weight(weight: torch.Tensor, dims: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``weight`` (same shape and values) whose memory is in ``[*out, O, *kernel, C/g]`` order,
    the order of the GEMMs' K: with it, forward and backward skip the weight's per-call transposes
    (``[P*O, C/g, taps] <-> [P*O, taps, C/g]``), and the fused backward returns the weight gradient in
    the same memory order, unless told otherwise. ``out``: a flat buffer of ``weight.numel()`` values to
    copy into (returned as a view of it); without it a weight already in that order is returned as is."""
    order = taps_last_order(dims)
    inverse = tuple(order.index(i) for i in range(len(order)))
    source = weight.permute(order)
    if out is None:
        return source.contiguous().permute(inverse)
    return out.view(source.shape).copy_(source).permute(inverse)


def taps_last_empty(shape: Sequence[int], dims: int, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialized weight of logical ``shape`` ``[*out, O, C/g, *kernel]`` stored taps-last
    (see :func:`taps_last_weight`)."""
    order = taps_last_order(dims)
    inverse = tuple(order.index(i) for i in range(len(order)))
    return torch.empty([shape[i] for i in order], device=device, dtype=dtype).permute(inverse)


def is_taps_last(weight: torch.Tensor, dims: int) -> bool:
    """Whether ``weight``'s memory is in taps-last order (see :func:`taps_last_weight`)."""
    return weight.permute(taps_last_order(dims)).is_contiguous()


_is_taps_last = is_taps_last


def _chunk_positions(geo: Geometry, chunk_bytes: int | None, device: torch.device, itemsize: int
                     ) -> tuple[list[tuple[int, int]], int]:
    """The row chunks and the largest chunk's number of GEMMs (positions * groups)."""
    chunks = list(_row_chunks(geo, itemsize, _chunk_bytes(device, chunk_bytes)))
    per_row = math.prod(geo.out_size[1:]) * geo.groups
    return chunks, max(r1 - r0 for r0, r1 in chunks) * per_row


def _column_products(xp: torch.Tensor, weight: torch.Tensor, geo: Geometry, y: torch.Tensor,
                     chunks: list[tuple[int, int]], w_cols: torch.Tensor, buffer: torch.Tensor) -> None:
    """The GEMMs of every position and group from gathered columns (chunks of rows), into ``y``
    ``[L, g, N, O/g]``."""
    per_row = math.prod(geo.out_size[1:]) * geo.groups
    for r0, r1 in chunks:
        l0, l1 = r0 * per_row, r1 * per_row
        chunk = _gather_columns(xp, geo, r0, r1, buffer[:l1 - l0])
        torch.bmm(chunk, _weight_columns(weight[r0:r1], geo, w_cols[:l1 - l0]).transpose(1, 2), out=y[l0:l1])


def _fold_chunks(geo: Geometry, chunk_bytes: int | None, device: torch.device, itemsize: int
                 ) -> tuple[list[tuple[int, int]], int]:
    """Ranges along the second output dimension whose windows gathered for :func:`_folded_products` take
    at most ``chunk_bytes``, and the largest range's number of values (1-D: one range, nothing gathered)."""
    if geo.dims == 1:
        return [(0, 1)], 0
    per_index = math.prod(geo.out_size[2:]) * padded_shape(geo)[1] * geo.input_shape[0] * geo.k // geo.kernel[0]
    step = max(1, _chunk_bytes(device, chunk_bytes) // (per_index * itemsize))
    size = geo.out_size[1]
    return [(q0, min(q0 + step, size)) for q0 in range(0, size, step)], min(step, size) * per_index


def _folded_products(xp: torch.Tensor, weight: torch.Tensor, geo: Geometry, y: torch.Tensor,
                     chunks: list[tuple[int, int]], buffer: torch.Tensor, w_line: torch.Tensor | None) -> None:
    """The same GEMMs (ungrouped, undilated first dimension) into ``y`` ``[*out[1:], out[0], N, O]``, from
    the weight in taps-last order (its memory, else a copy per line into ``w_line``) and a gather of the
    windows along every dimension
    but the first, ``[*out[1:], N, padded[0], *kernel[1:], C]``: ``prod(kernel[1:])`` times the input
    instead of ``prod(kernel)`` times (1-D: nothing gathered). There a window's K values, in (*kernel, c)
    order, are ``kernel[0]`` runs of ``prod(kernel[1:])*C`` and the runs of consecutive rows follow each
    other: the window of every image is one row of a strided ``[N, K]`` matrix, the operand of the
    column GEMM but for its leading dimension (same products, same bits), and the positions along the
    first dimension are one batched GEMM."""
    n, c, o, d = geo.input_shape[0], geo.input_shape[1], geo.out_channels, geo.dims
    out0, rest, k = geo.out_size[0], geo.out_size[1:], geo.k
    padded0, inner = xp.shape[1], k // geo.kernel[0]  # one padded row of a window
    per_line = n * padded0 * inner  # gathered values per position of the other dimensions
    lines = math.prod(rest[1:])
    xs = xp.stride()
    spatial = xs[1:-1]
    if w_line is None:
        w_rows = weight.permute(taps_last_order(d)).view(geo.positions, o, k)  # its memory
        w_strides = (math.prod(rest) * o * k, k, 1)
    else:  # [out0, *rest, O, C, taps]: one line's weight transposed per line
        by_line = weight.reshape(out0, math.prod(rest), o, c, geo.taps)
        w_rows = w_line.view(out0, o, geo.taps, c)
    for q0, q1 in chunks:
        source = xp
        if d > 1:
            windows = xp.as_strided(
                (q1 - q0, *rest[1:], n, padded0, *geo.kernel[1:], c),
                (*(s * st for s, st in zip(geo.stride[1:], spatial[1:])), xs[0], spatial[0],
                 *(dl * st for dl, st in zip(geo.dilation[1:], spatial[1:])), 1),
                xp.storage_offset() + q0 * geo.stride[1] * spatial[1])
            source = buffer[:windows.numel()].view(windows.shape).copy_(windows)
        for line in range((q1 - q0) * lines):
            a = source.as_strided((out0, n, k), (geo.stride[0] * inner, padded0 * inner, 1),
                                  source.storage_offset() + line * per_line)
            position = q0 * lines + line  # among the positions of the other dimensions
            if w_line is None:
                w = w_rows.as_strided((out0, o, k), w_strides, w_rows.storage_offset() + position * o * k)
            else:
                w = w_rows.copy_(by_line[:, position].transpose(-1, -2)).view(out0, o, k)
            torch.bmm(a, w.transpose(1, 2), out=y[position * out0:(position + 1) * out0])


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: Geometry,
            memory_format: torch.memory_format, chunk_bytes: int | None = None,
            padded_out: torch.Tensor | None = None) -> torch.Tensor:
    """``y [N, O, *out]``; bias ``[O, *out]`` (untied) or ``[O]`` (shared). ``padded_out`` (``[N, *padded, C]``,
    :func:`padded_shape`): where to build the padded channels-last input, for a caller that keeps it for the
    backward (``backward(..., padded=)``); by default a work buffer."""
    n, o, g = geo.input_shape[0], geo.out_channels, geo.groups
    if n == 0:  # an empty batch: an empty output, as F.convNd gives
        return empty_output(x, geo, memory_format)
    out0, others = geo.out_size[0], math.prod(geo.out_size[1:])
    padded = padded_shape(geo) if padded_out is None else (0,)  # a work buffer unless the caller keeps it
    shapes: list[Sequence[int]] = [(geo.positions * g, n, o // g), padded]
    folded = g == 1 and geo.dilation[0] == 1
    if folded:
        chunks, most = _fold_chunks(geo, chunk_bytes, x.device, x.element_size())
        taps_last = _is_taps_last(weight, geo.dims)
        shapes += [(most,)] + ([] if taps_last else [(out0, o, geo.k)])
    else:
        chunks, most = _chunk_positions(geo, chunk_bytes, x.device, x.element_size())
        shapes += [(most, o // g, geo.group_k), (most, n, geo.group_k)]
    y, xp, *work = _scratch(x, *shapes)
    xp = _padded_channels_last(x, geo.pads, xp if padded_out is None else padded_out)
    if folded:
        _folded_products(xp, weight, geo, y, chunks, work[0], None if taps_last else work[1])
        # [*out[1:], out[0], N, O] memory seen as [N, g, O/g, out[0], prod(out[1:])]
        y_view = y.view(others, out0, n, 1, o).permute(2, 3, 4, 1, 0)
    else:
        _column_products(xp, weight, geo, y, chunks, *work)
        # [L, g, N, O/g] memory seen as [N, g, O/g, out[0], prod(out[1:])]
        y_view = y.view(out0, others, g, n, o // g).permute(3, 2, 4, 0, 1)
    out = torch.empty((n, o, *geo.out_size), dtype=y.dtype, device=y.device, memory_format=memory_format)
    out_view = out.view(n, g, o // g, out0, others)
    if bias is None:
        out_view.copy_(y_view)
    else:  # added in the copy to the output layout (cheaper than baddbmm's extra pass)
        bias_view = bias.reshape(g, o // g, out0, others) if bias.dim() > 1 else bias.view(g, o // g, 1, 1)
        torch.add(y_view, bias_view, out=out_view)
    return out


def empty_output(x: torch.Tensor, geo: Geometry, memory_format: torch.memory_format) -> torch.Tensor:
    """The output ``[0, O, *out]`` of an empty batch (any backend)."""
    return torch.empty((0, geo.out_channels, *geo.out_size), dtype=x.dtype, device=x.device,
                       memory_format=memory_format)


def empty_batch_grads(grad_out: torch.Tensor, geo: Geometry, need_input: bool, need_weight: bool,
                      memory_format: torch.memory_format, taps_last: bool = False
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_input, grad_weight) of an empty batch (any backend): ``[0, C, *S]`` and zeros."""
    grad_x = grad_w = None
    if need_input:
        grad_x = torch.empty(geo.input_shape, dtype=grad_out.dtype, device=grad_out.device,
                             memory_format=memory_format)
    if need_weight:
        shape = (*geo.out_size, geo.out_channels, geo.input_shape[1] // geo.groups, *geo.kernel)
        grad_w = (taps_last_empty(shape, geo.dims, grad_out.device, grad_out.dtype).zero_() if taps_last
                  else grad_out.new_zeros(shape))
    return grad_x, grad_w


def _grad_rows(grad_out: torch.Tensor, geo: Geometry, out: torch.Tensor) -> torch.Tensor:
    """``grad_out [N, O, *out]`` as ``[L, O, N]`` (rows of N contiguous) in ``out``'s memory: per group and
    position an ``[O/g, N]`` matrix, which both backward GEMMs take as is or transposed (MKL runs both
    faster from it than from ``[N, O/g]``).

    The reversal ``[N, O, L] -> [L, O, N]`` done as one strided copy walks memory with a stride of
    ``O*L`` values in its inner loop (many times slower at N=512); instead: one 2-D transpose (torch's
    blocked transpose copy), ``[N, O*L] -> [O*L, N]`` (memory ``[O, L, N]``, leading dimension ``L*N``) from
    a plain contiguous gradient, ``[N, L*O] -> [L*O, N]`` (memory ``[L, O, N]``) from a channels-last one."""
    n, o, d, positions = geo.input_shape[0], geo.out_channels, geo.dims, geo.positions
    channels_last = grad_out.permute(0, *range(2, d + 2), 1)  # [N, *out, O]
    if channels_last.is_contiguous() and not grad_out.is_contiguous():
        out.view(positions * o, n).copy_(channels_last.reshape(n, positions * o).t())
        return out.view(positions, o, n)
    out.view(o * positions, n).copy_(grad_out.reshape(n, o * positions).t())
    return out.view(o, positions, n).transpose(0, 1)


def grad_weight(grad_out: torch.Tensor, x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Weight gradient ``[*out, O, C/g, *kernel]`` from the input ``x``."""
    return backward(grad_out, x, None, geo, False, True, torch.contiguous_format)[1]


def grad_input(grad_out: torch.Tensor, weight: torch.Tensor, geo: Geometry, memory_format: torch.memory_format
               ) -> torch.Tensor:
    """Input gradient ``[N, C, *S]`` in ``memory_format``."""
    return backward(grad_out, None, weight, geo, True, False, memory_format)[0]


@functools.lru_cache(maxsize=256)
def _line_taps(geo: Geometry, run: int) -> tuple[tuple[int, tuple[tuple[int, int, int], ...]], ...]:
    """Per line of positions (all output coordinates but the last): its first position and, for every
    ``run``-th tap of the last kernel dimension (``run`` taps from there on are taken together), (flat tap
    index, offset of that tap of the line's first window in the padded channels-last input
    ``[N, *padded, C]``, offset in the input-gradient grid ``[*padded, N, C]``). Cached: the backward
    loops over it, and the arithmetic costs as much as the GEMMs on small batches."""
    n, c = geo.input_shape[:2]
    padded = padded_shape(geo)[1:-1]
    x_strides = [math.prod(padded[i + 1:]) * c for i in range(geo.dims)]
    tap_grid = [range(k) for k in geo.kernel[:-1]] + [range(0, geo.kernel[-1], run)]
    plan = []
    for index, line in enumerate(itertools.product(*(range(size) for size in geo.out_size[:-1]))):
        entries = []
        for tap in itertools.product(*tap_grid):
            flat = 0
            for j, k in zip(tap, geo.kernel):
                flat = flat * k + j
            start = [i * s + j * dl for i, s, j, dl in zip((*line, 0), geo.stride, tap, geo.dilation)]
            offset = sum(a * b for a, b in zip(start, x_strides))
            entries.append((flat, offset, offset * n))
        plan.append((index * geo.out_size[-1], tuple(entries)))
    return tuple(plan)


def _tap_gemms(geo: Geometry) -> bool:
    """Whether the backward runs per (line, tap) GEMMs rather than over gathered columns: when each
    such GEMM has enough work to amortize its call (some microseconds of dispatch each; a 3-D layer
    has lines*taps of them, thousands)."""
    n, c = geo.input_shape[:2]
    return geo.out_size[-1] * n * (geo.out_channels // geo.groups) * (c // geo.groups) >= TAP_GEMM_MIN_MACS


def _row_gemms(geo: Geometry) -> bool:
    """Whether a backward that runs per-tap GEMMs (:func:`_tap_gemms`) computes the input gradient per
    target row with ``K = kernel[-1] * O`` instead (see :func:`_row_input_grad`): one group, stride and
    dilation 1 along the last dimension."""
    return geo.groups == 1 and geo.stride[-1] == 1 and geo.dilation[-1] == 1


def _row_margins(geo: Geometry) -> tuple[int, int]:
    """Zero positions before and after each line of the padded output gradient (:func:`_padded_rows`): the
    windows of the input columns at both ends reach that far past the line's positions."""
    kl, width, before, m = geo.kernel[-1], geo.input_shape[-1], geo.pads[-2], geo.out_size[-1]
    return max(0, kl - 1 - before), max(0, width + before - m)


def _padded_rows_shape(geo: Geometry) -> tuple[int, ...]:
    lo, hi = _row_margins(geo)
    n, o = geo.input_shape[0], geo.out_channels
    return (*geo.out_size[:-1], lo + geo.out_size[-1] + hi, o, n)


def _padded_rows(rows: torch.Tensor, geo: Geometry, out: torch.Tensor) -> torch.Tensor:
    """The output gradient rows ``[L, O, N]`` (:func:`_grad_rows`) as ``[*out[:-1], margin + out[-1] + margin,
    O, N]``, zero positions at both ends of every line: along a line, ``kernel[-1]`` consecutive positions'
    ``[O, N]`` matrices are then one contiguous ``[kernel[-1]*O, N]`` block, the operand of
    :func:`_row_input_grad`. (A copy in runs of N values: from ``grad_out`` directly it would walk memory
    with a stride of ``O*L`` values, several times slower.)"""
    n, o, m = geo.input_shape[0], geo.out_channels, geo.out_size[-1]
    lo, hi = _row_margins(geo)
    if lo:
        out[..., :lo, :, :].zero_()
    if hi:
        out[..., lo + m:, :, :].zero_()
    out[..., lo:lo + m, :, :].copy_(rows.view(*geo.out_size, o, n))
    return out


def _transposed_weight(weight: torch.Tensor, geo: Geometry, buffer: torch.Tensor, r0: int = 0, r1: int = 1
                       ) -> torch.Tensor:
    """The weight regrouped by the input column it reaches: ``[*out[:-1], *kernel[:-1], W, kernel[-1], O, C]``
    with ``out[..., v, b', o, c] = weight[..., j, o, ..., kernel[-1]-1-b', c]`` for the position ``j`` whose
    window has input column ``v`` under tap ``kernel[-1]-1-b'`` (zero where that position does not exist);
    of 2-D and 3-D layers only the output rows ``[r0, r1)`` of the first dimension, at the start of the flat
    ``buffer``. One strided copy per tap of the last kernel dimension, from the weight in any memory layout."""
    d, o, c = geo.dims, geo.out_channels, geo.input_shape[1]
    m, kl, width, before = geo.out_size[-1], geo.kernel[-1], geo.input_shape[-1], geo.pads[-2]
    strides = weight.stride()
    st_out, st_o, st_c, st_k = strides[:d], strides[d], strides[d + 1], strides[d + 2:]
    lines = (r1 - r0, *geo.out_size[1:-1]) if d > 1 else ()
    shape = (*lines, *geo.kernel[:-1], width, kl, o, c)
    out = buffer[:math.prod(shape)].view(shape)
    first = weight.storage_offset() + (r0 * st_out[0] if d > 1 else 0)
    for b in range(kl):
        shift = before - (kl - 1) + b  # position j = v + shift
        v0, v1 = min(width, max(0, -shift)), max(0, min(width, m - shift))
        if v0:
            out[..., :v0, b, :, :].zero_()
        if max(v0, v1) < width:
            out[..., max(v0, v1):, b, :, :].zero_()
        if v1 > v0:
            source = weight.as_strided((*lines, *geo.kernel[:-1], v1 - v0, o, c),
                                       (*st_out[:-1], *st_k[:-1], st_out[-1], st_o, st_c),
                                       first + (v0 + shift) * st_out[-1] + (kl - 1 - b) * st_k[-1])
            out[..., v0:v1, b, :, :].copy_(source)
    return out


def _weight_slabs(geo: Geometry, itemsize: int, chunk_bytes: int) -> tuple[list[tuple[int, int]], int]:
    """Ranges of first-dimension output rows whose transposed weight (:func:`_transposed_weight`) takes at
    most ``chunk_bytes`` (1-D: one range, the whole weight), and the number of values of the largest."""
    per_row = (math.prod(geo.out_size[1:-1]) * math.prod(geo.kernel[:-1]) * geo.input_shape[-1] * geo.kernel[-1]
               * geo.out_channels * geo.input_shape[1])
    if geo.dims == 1:
        return [(0, 1)], per_row
    rows = min(geo.out_size[0], max(1, chunk_bytes // (per_row * itemsize)))
    return [(r0, min(r0 + rows, geo.out_size[0])) for r0 in range(0, geo.out_size[0], rows)], rows * per_row


@functools.lru_cache(maxsize=256)
def _row_plan(geo: Geometry) -> tuple[tuple[tuple[int, int, int, bool], ...], tuple[int, ...]]:
    """For :func:`_row_input_grad`: (line, line-and-tap index of the transposed weight, target input row,
    first write of that row) for every (line, tap of the other kernel dimensions) whose row lies in the
    input, and the input rows no window reaches (flat indices over all dimensions but the last)."""
    spatial = geo.input_shape[2:-1]
    rows = {row: index for index, row in enumerate(itertools.product(*(range(s) for s in spatial)))}
    entries, written = [], set()
    taps = list(itertools.product(*(range(k) for k in geo.kernel[:-1])))
    for line_index, line in enumerate(itertools.product(*(range(size) for size in geo.out_size[:-1]))):
        for tap_index, tap in enumerate(taps):
            row = tuple(i * s + a * dl - before for i, a, s, dl, before
                        in zip(line, tap, geo.stride, geo.dilation, geo.pads[0::2]))
            if row not in rows:
                continue
            target = rows[row]
            entries.append((line_index, line_index * len(taps) + tap_index, target, target not in written))
            written.add(target)
    return tuple(entries), tuple(index for index in rows.values() if index not in written)


def _row_input_grad(geo: Geometry, rows: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor,
                    slabs: list[tuple[int, int]], buffer: torch.Tensor) -> None:
    """The input gradient into ``grid [*S, N, C]`` (written whole): per line of positions and tap of the
    other kernel dimensions, one batched GEMM over the target row's ``W`` input columns,
    ``grid[row, v] (+)= rows[line, v..v+kernel[-1]]^T @ w_t[line, tap, v]``, whose reduction runs over the
    ``kernel[-1]`` taps along the row and all O channels at once (``K = kernel[-1]*O``, not O as per tap):
    ``rows`` from :func:`_padded_rows`, ``w_t`` the weight regrouped by :func:`_transposed_weight`, a slab of
    first-dimension rows at a time into ``buffer``. A row's first GEMM writes it (no zeroing pass), the
    rest add to it."""
    n, c = geo.input_shape[:2]
    o, kl, width = geo.out_channels, geo.kernel[-1], geo.input_shape[-1]
    lo, _ = _row_margins(geo)
    start = lo + geo.pads[-2] - (kl - 1)  # padded position of input column 0's first window
    entries, untouched = _row_plan(geo)
    per_row = math.prod(geo.out_size[1:-1])  # lines per first-dimension row (2-D and 3-D; 1-D: one line)
    taps = math.prod(geo.kernel[:-1])
    positions = rows.shape[-3]
    # every line's [W, N, K] operand, and every input row: views made in one call each (per-item indexing
    # costs a dispatch per view, as much as a small GEMM's share of the work)
    operands = rows.as_strided((math.prod(geo.out_size[:-1]), width, n, kl * o), (positions * o * n, o * n, 1, n),
                               rows.storage_offset() + start * o * n).unbind(0)
    targets = grid.view(-1, width, n, c).unbind(0)
    entry = 0
    for r0, r1 in slabs:  # 1-D: the one slab (0, 1)
        weights = _transposed_weight(weight, geo, buffer, r0, r1).view(-1, width, kl * o, c).unbind(0)
        w0, line_end = r0 * per_row * taps, r1 * per_row
        while entry < len(entries) and entries[entry][0] < line_end:
            line, w_index, target, first = entries[entry]
            entry += 1
            if first:
                torch.bmm(operands[line], weights[w_index - w0], out=targets[target])
            else:
                targets[target].baddbmm_(operands[line], weights[w_index - w0])
    for target in untouched:
        targets[target].zero_()


def backward(grad_out: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor | None, geo: Geometry,
             need_input: bool, need_weight: bool, memory_format: torch.memory_format,
             chunk_bytes: int | None = None, padded: torch.Tensor | None = None,
             grad_weight_taps_last: bool | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_input, grad_weight) from the input ``x`` and the weight. ``padded``: ``x`` as the forward padded
    it (``forward(..., padded_out=)``), which the weight gradient then reads instead of building it again.
    ``grad_weight_taps_last``: the memory order of the weight gradient (default: the weight's; False:
    contiguous, e.g. for a contiguous parameter whose taps-last copy is passed as ``weight``).

    Per position p, tap t and group, with ``x_t[p] [N, C/g]`` the input under tap t of p's window:
    ``grad_w[p, :, t] = grad_rows[p] @ x_t[p]`` and ``grad_x[window_t(p)] += grad_rows[p]^T @ w[p, :, t]``.
    Along a line of positions (the last output dimension) every operand is one strided view (of the
    channels-last padded input, of the ``[*padded, N, C]`` input-gradient grid, of the taps-last weight
    and its gradient), so each (line, tap, group) is one batched GEMM and nothing is gathered: the
    im2col columns (``taps`` times the input) cost more to write and read back than these smaller GEMMs
    lose (see :func:`_tap_gemms` for when they are too small; then: columns, see :func:`_column_backward`).
    Undilated and ungrouped, the taps of the last kernel dimension lie side by side in both the input
    and the weight gradient: the weight gradient takes them in one GEMM (``k*C`` wide). With one group
    and stride and dilation 1 along the last dimension, the input gradient is computed per input row
    instead (:func:`_row_input_grad`): a reduction over ``kernel[-1]*O`` values per GEMM rather than O,
    a third of the calls for a 3x3 kernel, and no accumulation pass over a zeroed grid."""
    n, c = geo.input_shape[:2]
    spatial, d, g, o = geo.input_shape[2:], geo.dims, geo.groups, geo.out_channels
    og, cg, taps, positions, m = o // g, c // g, geo.taps, geo.positions, geo.out_size[-1]
    taps_last = weight is not None and _is_taps_last(weight, d)
    grad_taps_last = taps_last if grad_weight_taps_last is None else grad_weight_taps_last
    if n == 0:  # an empty batch: an empty input gradient and a zero weight gradient, as F.convNd gives
        return empty_batch_grads(grad_out, geo, need_input, need_weight, memory_format, grad_taps_last)
    padded_dims = padded_shape(geo)  # [N, *padded, C]
    per_tap = _tap_gemms(geo)
    by_rows = per_tap and _row_gemms(geo)  # the input gradient per target row (K = kernel[-1] * O)
    # undilated and ungrouped, the weight gradient takes the last kernel dimension's taps in one GEMM
    run = geo.kernel[-1] if g == 1 and geo.dilation[-1] == 1 else 1
    # A taps-last weight is read in place and gets a taps-last gradient (autograd keeps that layout);
    # another is copied in taps-last order a line (chunk) at a time, its gradient copied back likewise.
    w_copy, gw_copy = need_input and not taps_last and not by_rows, need_weight and not grad_taps_last
    if per_tap:
        blocks = m * g  # GEMMs per line
    else:
        chunks, blocks = _chunk_positions(geo, chunk_bytes, grad_out.device, grad_out.element_size())
    shapes: list[Sequence[int]] = [(o * positions, n)] + [_padded_rows_shape(geo)] * by_rows
    shapes += [padded_dims if padded is None else (0,)] * need_weight  # the padded input
    if by_rows:  # the input gradient (every row written) and slabs of the weight regrouped by input column
        slabs, slab_values = _weight_slabs(geo, grad_out.element_size(), _chunk_bytes(grad_out.device, chunk_bytes))
        shapes += [(*spatial, n, c), (slab_values,)] * need_input
    else:
        shapes += [(*padded_dims[1:-1], n, c)] * need_input  # the input-gradient grid
    shapes += [(blocks, og, geo.group_k)] * w_copy  # the weight of a line (chunk), taps-last
    if per_tap:  # one line's weight gradient, tap-major (and taps-last, for a contiguous gradient)
        shapes.append((taps // run, g, m, og, run * cg))
        shapes += [(m * o * taps * cg,)] * (need_weight and not grad_taps_last)
    else:  # chunks of columns (then their gradients); their weight gradient; the rows by group
        shapes += [(blocks, n, geo.group_k)] + [(blocks, og, geo.group_k)] * gw_copy + [(positions, g, og, n)] * (g > 1)
    grad_rows, *rest = _scratch(grad_out, *shapes)
    grad_rows = _grad_rows(grad_out, geo, grad_rows)  # [L, O, N]
    line_rows = grad_rows.unflatten(0, (-1, m))  # [lines, out[-1], O, N]
    if by_rows:
        padded_rows = _padded_rows(grad_rows, geo, rest.pop(0))  # [*out[:-1], margins + out[-1], O, N]
    xp = None
    if need_weight:
        slot = rest.pop(0)  # empty when the forward's padded input is given
        xp = _padded_channels_last(x, geo.pads, slot) if padded is None else padded
    grid = rest.pop(0) if need_input else None
    if by_rows and need_input:
        _row_input_grad(geo, padded_rows, weight, grid, slabs, rest.pop(0))
    elif need_input:
        grid.zero_()
    w_block = rest.pop(0) if w_copy else None
    grad_w = None
    if need_weight:
        weight_shape = (*geo.out_size, o, cg, *geo.kernel)
        grad_w = (taps_last_empty(weight_shape, d, grad_out.device, grad_out.dtype) if grad_taps_last
                  else grad_out.new_empty(weight_shape))
    if per_tap:
        _tap_backward(geo, line_rows, xp, grad_w, None if by_rows else grid, weight, w_block, rest[0], run,
                      rest[1] if need_weight and not grad_taps_last else None)
    else:
        buffer = rest.pop(0)
        gw_block = rest.pop(0) if gw_copy else None
        by_group = rest.pop(0) if g > 1 else None
        _column_backward(geo, grad_rows, xp, grad_w, grid, weight, w_block, chunks, buffer, gw_block, by_group)
    grad_x = None
    if need_input:
        # [*S, N, C]: the grid itself (by rows) or its interior
        inner = grid if by_rows else grid[tuple(slice(b, b + s) for b, s in zip(geo.pads[0::2], spatial))]
        grad_x = torch.empty((n, c, *spatial), dtype=grid.dtype, device=grid.device, memory_format=memory_format)
        grad_x.copy_(inner.permute(d, d + 1, *range(d)))  # a copy out of the scratch grid
    return grad_x, grad_w


def _tap_backward(geo: Geometry, line_rows: torch.Tensor, xp: torch.Tensor | None, grad_w: torch.Tensor | None,
                  grid: torch.Tensor | None, weight: torch.Tensor | None, w_block: torch.Tensor | None,
                  gw_line: torch.Tensor, run: int, gw_taps_last: torch.Tensor | None = None) -> None:
    """The per (line, tap, group) GEMMs of :func:`backward`: weight gradient into ``grad_w`` (through
    ``gw_line``, a line at a time), input gradient added into ``grid`` (unless None); the weight read in
    place if taps-last, else a line at a time through ``w_block``. ``line_rows``: the output gradient as
    ``[lines, out[-1], O, N]`` (any strides)."""
    n, c = geo.input_shape[:2]
    d, g, o, taps, m = geo.dims, geo.groups, geo.out_channels, geo.taps, geo.out_size[-1]
    og, cg = o // g, c // g
    group_rows = [line_rows[:, :, j * og:(j + 1) * og] for j in range(g)]  # [lines, m, O/g, N]
    if grad_w is not None:
        x_strides = (geo.stride[-1] * c, xp.stride(0), 1)
        # [L, g, O/g, taps/run, run, C/g], a view in taps-last order of either layout
        gw_rows = grad_w.permute(taps_last_order(d)).view(-1, m, g, og, taps // run, run, cg).unbind(0)
        gw_contiguous = grad_w.view(-1, m * o, cg, taps).unbind(0) if gw_taps_last is not None else None
        gw_source = gw_line.view(taps // run, g, m, og, run, cg).permute(2, 1, 3, 0, 4, 5)
        outputs = gw_line.view(-1, m, og, run * cg).unbind(0)  # per (tap // run, group)
        rows_by_group = [group.unbind(0) for group in group_rows]  # per group, per line: [m, O/g, N]
        for p0, entries in _line_taps(geo, run):
            line = p0 // m
            for t, offset, _ in entries:
                for j in range(g):
                    x_taps = xp.as_strided((m, n, run * cg), x_strides, xp.storage_offset() + offset + j * cg)
                    torch.bmm(rows_by_group[j][line], x_taps, out=outputs[t // run * g + j])
            # a batched GEMM writes a strided output one matrix at a time: the line goes through a
            # contiguous (cache-resident) block instead
            if gw_taps_last is None:
                gw_rows[line].copy_(gw_source)
            else:  # a contiguous gradient: the line taps-last first (long runs), then one batched transpose
                # [m*O, taps, C/g] -> [m*O, C/g, taps] (a direct copy would run inner loops of kernel[-1])
                block = gw_taps_last.view(m, g, og, taps // run, run, cg).copy_(gw_source)
                gw_contiguous[line].copy_(block.view(m * o, taps, cg).transpose(1, 2))
    if grid is not None:
        grid_strides, w_strides = (geo.stride[-1] * n * c, c, 1), (o * taps * cg, taps * cg, 1)
        group_rows_t = [rows.transpose(2, 3) for rows in group_rows]  # [lines, m, N, O/g]
        w_rows = weight.permute(taps_last_order(d))  # [*out, O, *kernel, C/g]
        if w_block is None:
            w_rows = w_rows.view(geo.positions, o, taps, cg)
        else:
            w_rows = w_rows.reshape(geo.positions, o, *geo.kernel, cg)
            w_block = w_block.view(m, o, *geo.kernel, cg)
        for p0, entries in _line_taps(geo, 1):
            rows_t = [group[p0 // m] for group in group_rows_t]
            if w_block is None:  # the line's weight in place
                w_line, w_offset = w_rows, w_rows.storage_offset() + p0 * o * taps * cg
            else:
                w_line = w_block.copy_(w_rows[p0:p0 + m])
                w_offset = w_line.storage_offset()
            for t, _, offset in entries:
                for j in range(g):
                    target = grid.as_strided((m, n, cg), grid_strides, grid.storage_offset() + offset + j * cg)
                    w_tap = w_line.as_strided((m, og, cg), w_strides, w_offset + (j * og * taps + t) * cg)
                    target.baddbmm_(rows_t[j], w_tap)


def _column_backward(geo: Geometry, grad_rows: torch.Tensor, xp: torch.Tensor | None, grad_w: torch.Tensor | None,
                     grid: torch.Tensor | None, weight: torch.Tensor | None, w_block: torch.Tensor | None,
                     chunks: list[tuple[int, int]], buffer: torch.Tensor, gw_block: torch.Tensor | None,
                     by_group: torch.Tensor | None) -> None:
    """:func:`backward` over gathered columns (chunks of rows): per chunk, the weight gradient is one
    batched GEMM with the columns (into ``grad_w``'s memory if taps-last, else through ``gw_block``),
    the input gradient one into the columns' buffer, whose taps are then added into ``grid``
    (contiguous ``N*C`` slabs of the ``[*padded, N, C]`` grid)."""
    n, c = geo.input_shape[:2]
    d, g, o, rest = geo.dims, geo.groups, geo.out_channels, geo.out_size[1:]
    og, cg, per_row = o // g, c // g, math.prod(rest) * g
    if by_group is None:  # one group: [L, O, N] is already a uniform batch
        by_group = grad_rows
    else:  # [L, g, O/g, N] copied, so that positions and groups are one batch dimension
        by_group = by_group.copy_(grad_rows.view(geo.positions, g, og, n)).view(-1, og, n)
    for r0, r1 in chunks:
        l0, l1, rows = r0 * per_row, r1 * per_row, r1 - r0
        if grad_w is not None:
            cols = _gather_columns(xp, geo, r0, r1, buffer[:l1 - l0])
            if gw_block is None:  # taps-last: the GEMMs write the gradient in place
                gw_rows = grad_w.permute(taps_last_order(d)).reshape(-1, og, geo.group_k)[l0:l1]
                torch.bmm(by_group[l0:l1], cols, out=gw_rows)
            else:  # [P*O, taps, C/g] -> [P*O, C/g, taps]: one batched transpose
                torch.bmm(by_group[l0:l1], cols, out=gw_block[:l1 - l0])
                positions = (l1 - l0) // g
                gw = gw_block[:l1 - l0].view(positions * o, geo.taps, cg)
                grad_w[r0:r1].view(positions * o, cg, geo.taps).copy_(gw.transpose(1, 2))
        if grid is not None:
            w_cols = _weight_columns(weight[r0:r1], geo, None if w_block is None else w_block[:l1 - l0])
            grad_cols = torch.bmm(by_group[l0:l1].transpose(1, 2), w_cols, out=buffer[:l1 - l0])
            taps = grad_cols.view(rows, *rest, g, n, *geo.kernel, cg)
            for tap in itertools.product(*(range(k) for k in geo.kernel)):
                starts = [tap[0] * geo.dilation[0] + r0 * geo.stride[0],
                          *(t * dl for t, dl in zip(tap[1:], geo.dilation[1:]))]
                index = tuple(slice(s0, s0 + st * (size - 1) + 1, st)
                              for s0, st, size in zip(starts, geo.stride, (rows, *rest)))
                target = grid[index]  # [rows, *rest, N, C]
                source = taps[(Ellipsis, *tap, slice(None))]  # [rows, *rest, g, N, C/g]
                if g == 1:
                    target += source.squeeze(d)
                else:
                    target.unflatten(-1, (g, cg)).add_(source.transpose(d, d + 1))
