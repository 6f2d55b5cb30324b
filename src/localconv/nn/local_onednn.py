"""CPU float32 forward of the locally connected layers as one oneDNN grouped 1x1 convolution per chunk.

Per output position l (and group) the layer is a small GEMM (see :mod:`local_portable`). torch's batched
matmul runs those through MKL, which on CPUs other than Intel's takes its AVX2 code, while oneDNN, the
library behind ``F.conv2d``, runs AVX-512 JIT kernels on any x86 CPU (GEMM rates on a 2-core AMD EPYC:
``benchmarks/onednn_backward_probe.py``, BENCHMARKS.md). So the forward's GEMMs are phrased as a convolution:

    A 1x1 convolution with ``G`` groups maps an input ``[1, G*I, S, 1]`` to ``[1, G*J, S, 1]``:
    ``out[s, g, j] = sum_i in[s, g, i] * W[g, j, i]``; in channels-last memory the input is
    ``[S, G, I]`` and the output ``[S, G, J]``, and the weight ``[G*J, I, 1, 1]`` is ``[G, J, I]``.

Here s = image, g = (position, group), i = K in (*kernel, c) order and j = O: the im2col columns
``[N, L, K]`` (gathered in chunks of output rows of at most ``local_portable.CPU_CHUNK_BYTES``, into the
reused scratch buffer) and the weight in taps-last order ``[L, O, K]``. On that machine the step
(forward + backward) is mostly faster with it than with ``bmm``, most at N = 512 (``benchmarks/local_layer.py
--before``; figures in BENCHMARKS.md). The backward stays the portable one: its fused per-tap GEMMs, which
build no columns, beat on three of the four cc-11pct shapes, and match on the fourth, the oneDNN formulation
that ``benchmarks/onednn_backward_probe.py`` times (it needs column and transposed copies). Results equal the
portable forward's to float32 rounding (another summation order).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from localconv.nn.local_portable import (CPU_CHUNK_BYTES, Geometry, _padded_channels_last, _row_chunks, _scratch,
                                         empty_output, is_taps_last, padded_shape, taps_last_order,
                                         taps_last_weight, input_windows)


def usable(x: torch.Tensor) -> bool:
    """Whether this path serves ``x``'s call: float32 on the CPU with oneDNN available and enabled
    (``torch.backends.mkldnn.flags(enabled=False)`` turns it off; then the portable backend serves)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


@functools.cache
def _conv_add_op():  # noqa: ANN202
    """oneDNN's in-place "convolution + add" (the op inductor fuses ``conv + x`` into), or None where this
    torch lacks it or the call :func:`_add_conv` makes (a private op, whose schema could change between
    versions) does not give ``out + conv`` on a small grouped case. Checked once, on first use."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise_.binary
    except (AttributeError, RuntimeError):
        return None
    return checked_conv_add(op)


def checked_conv_add(op):  # noqa: ANN001, ANN201
    """``op`` if :func:`_add_conv` through it computes what it does through ``F.conv2d``, else None."""
    spatial, groups, width_in, width_out = 3, 2, 4, 5

    def values(*shape: int) -> torch.Tensor:
        # fixed, distinct values (no random op: the global generator stays untouched), float32 on the CPU
        # whatever torch's defaults
        return torch.arange(math.prod(shape), dtype=torch.float32, device="cpu").mul_(0.37).sin_().view(shape)

    inp, out = values(spatial, groups * width_in), values(spatial, groups * width_out).flip(0).contiguous()
    weight = values(groups * width_out, width_in, 1, 1)
    with torch.autocast("cpu", enabled=False):  # float32 maths
        want = out.clone()
        _add_conv(None, want, inp, weight, spatial, groups)
        try:
            _add_conv(op, out, inp, weight, spatial, groups)
        except (RuntimeError, TypeError, ValueError):
            return None
    return op if torch.allclose(out, want, rtol=1e-5, atol=1e-5) else None


def _as_image(memory: torch.Tensor, spatial: int) -> torch.Tensor:
    """A contiguous ``[S, G, I]`` memory as the channels-last image ``[1, G*I, S, 1]`` oneDNN reads."""
    channels = memory.numel() // spatial
    return memory.as_strided((1, channels, spatial, 1), (spatial * channels, 1, channels, channels))


def _add_conv(op, out: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, spatial: int,  # noqa: ANN001
              groups: int) -> None:
    """``out [S, G*J] += conv(inp [S, G, I], weight [G*J, I, 1, 1])`` through ``op`` (oneDNN's in-place
    convolution + add), or ``F.conv2d`` and an add when ``op`` is None."""
    image = _as_image(inp, spatial)
    if op is None:
        out += F.conv2d(image, weight, None, 1, 0, 1, groups)[0, :, :, 0].t()
    else:
        op(_as_image(out, spatial), image, weight, None, [0, 0], [1, 1], [1, 1], groups, "add", 1.0, None, [], None)


def _grouped_1x1(inp: torch.Tensor, weight: torch.Tensor, spatial: int, groups: int, out: torch.Tensor) -> None:
    """``out [S, G*J] += conv``: ``inp`` memory ``[S, G, I]`` and ``weight`` ``[G*J, I]``, all contiguous; one
    oneDNN convolution (see the module docstring), whose result is added in place into ``out`` (zeroed or
    holding the bias)."""
    # (a fresh multi-MiB output written by oneDNN costs more to read back than the GEMM: page faults and
    # cache misses; the scratch buffer it adds into is warm)
    with torch.autocast("cpu", enabled=False):  # float32 maths, as the other passes
        _add_conv(_conv_add_op(), out, inp, weight.view(*weight.shape, 1, 1), spatial, groups)


def _taps_last_rows(weight: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """The weight as ``[L*O, taps*C/g]`` rows in (*kernel, c) order: a view of a taps-last weight, else a copy."""
    if not is_taps_last(weight, geo.dims):
        weight = taps_last_weight(weight, geo.dims)
    return weight.permute(taps_last_order(geo.dims)).reshape(geo.positions * geo.out_channels, geo.group_k)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: Geometry,
            memory_format: torch.memory_format, padded_out: torch.Tensor | None = None) -> torch.Tensor:
    """``y [N, O, *out]``, as :func:`local_portable.forward` (same arguments)."""
    n, o, g, d = geo.input_shape[0], geo.out_channels, geo.groups, geo.dims
    if n == 0:
        return empty_output(x, geo, memory_format)
    rest = geo.out_size[1:]
    per_row = math.prod(rest)
    chunks = list(_row_chunks(geo, x.element_size(), CPU_CHUNK_BYTES))  # columns of <= 8 MiB each
    rows_most = max(r1 - r0 for r0, r1 in chunks)
    shapes: list[Sequence[int]] = [(n * rows_most * per_row * geo.k,), (n * rows_most * per_row * o,)]
    if padded_out is None:
        shapes.append(padded_shape(geo))
    cols_buffer, y_buffer, *work = _scratch(x, *shapes)
    xp = _padded_channels_last(x, geo.pads, work[0] if padded_out is None else padded_out)
    w_rows = _taps_last_rows(weight, geo)  # [L*O, K]
    out = torch.empty((n, o, *geo.out_size), dtype=x.dtype, device=x.device, memory_format=memory_format)
    for r0, r1 in chunks:
        rows = r1 - r0
        # K per group in (*kernel, c) order: [N, rows, *rest, g, *kernel, cg]
        source = input_windows(xp, geo, r0, r1).movedim(-2, 1 + d)
        cols = cols_buffer[:source.numel()].view(source.shape).copy_(source)
        positions = rows * per_row
        y = y_buffer[:n * positions * o].view(n, rows, *rest, o)
        if bias is None:
            y.zero_()
        else:  # the convolution adds to it
            y.copy_((bias[:, r0:r1] if bias.dim() > 1 else bias.view(o, *([1] * d))).movedim(0, -1).expand_as(y))
        _grouped_1x1(cols, w_rows[r0 * per_row * o:r1 * per_row * o], n, positions * g, y.view(n, positions * o))
        out[:, :, r0:r1].copy_(y.movedim(-1, 1))
    return out
