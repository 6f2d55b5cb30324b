"""CPU float32 forward of the locally connected layers as one oneDNN grouped 1x1 convolution per chunk.

Per output position l (and group) the layer is a small GEMM (see :mod:`local_portable`). torch's batched
matmul runs those through MKL, which on CPUs other than Intel's takes its AVX2 code (about 190 GFLOP/s
on two AMD Zen 5 cores), while oneDNN, the library behind ``F.conv2d``, runs AVX-512 JIT kernels on any
x86 CPU (300-410 GFLOP/s there on these shapes). So the forward's GEMMs are phrased as a convolution:

    A 1x1 convolution with ``G`` groups maps an input ``[1, G*I, S, 1]`` to ``[1, G*J, S, 1]``:
    ``out[s, g, j] = sum_i in[s, g, i] * W[g, j, i]``; in channels-last memory the input is
    ``[S, G, I]`` and the output ``[S, G, J]``, and the weight ``[G*J, I, 1, 1]`` is ``[G, J, I]``.

Here s = image, g = (position, group), i = K in (*kernel, c) order and j = O: the im2col columns
``[N, L, K]`` (gathered in chunks of output rows of at most ``local_portable.CPU_CHUNK_BYTES``, into the
reused scratch buffer) and the weight in taps-last order ``[L, O, K]``. Measured on that machine, this
forward takes 25-40% less time than the portable one on the cc-11pct shapes (benchmarks/local_layer.py).
The backward stays the portable one: its fused per-tap GEMMs, which build no columns, beat a oneDNN
formulation there (every formulation tried needs column or transposed copies that cost more than the
faster GEMMs save). Results equal the portable forward's to float32 rounding (another summation order).
"""
from __future__ import annotations

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


def _conv_add_op():  # noqa: ANN202
    """oneDNN's in-place "convolution + add" (the op inductor fuses ``conv + x`` into), or None where this
    torch lacks it or its call (a private op, whose schema could change between versions) does not give
    ``out + conv`` on a small grouped case (checked once, on first use: see :func:`_checked_conv_add`)."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise_.binary
    except (AttributeError, RuntimeError):
        return None
    return checked_conv_add(op)


def checked_conv_add(op):  # noqa: ANN001, ANN201
    """``op`` if it computes ``out += conv`` in place (grouped, channels-last, float32), else None."""
    spatial, groups, width_in, width_out = 3, 2, 4, 5

    def values(*shape: int) -> torch.Tensor:
        # fixed, distinct values (no random op: the first call may run under vmap, whose default refuses them),
        # float32 on the CPU whatever torch's defaults
        return torch.arange(math.prod(shape), dtype=torch.float32, device="cpu").mul_(0.37).sin_().view(shape)

    inp, out = values(spatial, groups * width_in), values(spatial, groups * width_out).flip(0).contiguous()
    weight = values(groups * width_out, width_in, 1, 1)
    with torch.autocast("cpu", enabled=False):  # float32 maths
        want = out + F.conv2d(_as_image(inp, spatial), weight, None, 1, 0, 1, groups)[0, :, :, 0].t()
        try:
            op(_as_image(out, spatial), _as_image(inp, spatial), weight, None, [0, 0], [1, 1], [1, 1], groups,
               "add", 1.0, None, [], None)
        except (RuntimeError, TypeError, ValueError):
            return None
    return op if torch.allclose(out, want, rtol=1e-5, atol=1e-5) else None


_UNCHECKED = object()
_CONV_ADD = _UNCHECKED  # the op once checked (or None); tests may set None to take the fallback


def _checked_conv_add():  # noqa: ANN202
    global _CONV_ADD
    if _CONV_ADD is _UNCHECKED:
        _CONV_ADD = _conv_add_op()
    return _CONV_ADD


def _as_image(memory: torch.Tensor, spatial: int) -> torch.Tensor:
    """A contiguous ``[S, G, I]`` memory as the channels-last image ``[1, G*I, S, 1]`` oneDNN reads."""
    channels = memory.numel() // spatial
    return memory.as_strided((1, channels, spatial, 1), (spatial * channels, 1, channels, channels))


def _grouped_1x1(inp: torch.Tensor, weight: torch.Tensor, spatial: int, groups: int, out: torch.Tensor) -> None:
    """``out [S, G*J] += conv``: ``inp`` memory ``[S, G, I]`` and ``weight`` ``[G*J, I]``, all contiguous; one
    oneDNN convolution (see the module docstring), whose result is added in place into ``out`` (zeroed or
    holding the bias)."""
    image, w4 = _as_image(inp, spatial), weight.view(*weight.shape, 1, 1)
    # (a fresh multi-MiB output written by oneDNN costs more to read back than the GEMM: page faults and
    # cache misses; the scratch buffer it adds into is warm)
    with torch.autocast("cpu", enabled=False):  # float32 maths, as the other passes
        conv_add = _checked_conv_add()
        if conv_add is not None:
            conv_add(_as_image(out, spatial), image, w4, None, [0, 0], [1, 1], [1, 1], groups, "add", 1.0,
                      None, [], None)
        else:
            out += F.conv2d(image, w4, None, 1, 0, 1, groups)[0, :, :, 0].t()


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
