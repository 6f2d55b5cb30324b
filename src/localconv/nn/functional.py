"""Functional locally connected (unshared-weight) 2-D convolution.

``local_conv2d(x, weight, bias, stride, padding)`` computes, for every output position (i, j)::

    y[n, o, i, j] = sum_{c,u,v} weight[i, j, o, c, u, v] * xpad[n, c, i*sh + u, j*sw + v] + bias[o, i, j]

with ``weight [out_h, out_w, out_channels, in_channels, kh, kw]`` (one ordinary conv filter bank per
output position) and ``bias [out_channels, out_h, out_w]``.

Two backends compute it, behind one autograd Function:

* ``portable`` (any device): im2col + batched matmul over output positions, in chunks of rows,
  :mod:`localconv.nn.local_portable`. Backward keeps only the input and rebuilds the columns
  chunk by chunk (``_KEEP_COLS = True`` keeps all columns instead; measured in docs/local_layer.md).
* ``triton`` (CUDA): fused implicit-GEMM kernels, :mod:`localconv.nn.triton_local`; backward
  keeps only the input.

``backend=None`` reads ``LOCALCONV_LOCAL_BACKEND`` (default ``auto``: triton on CUDA when importable
and the shapes/dtypes are supported, else portable).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType

import torch

from . import local_portable
from .utils import _padding4, _pair, conv_output_size, output_memory_format

__all__ = ["local_conv2d", "select_backend", "BACKENDS", "BACKEND_ENV", "_pair"]

BACKENDS = ("auto", "portable", "triton")
BACKEND_ENV = "LOCALCONV_LOCAL_BACKEND"

# Backward of the portable path keeps the input and rebuilds the columns (False), or keeps all
# columns (True: kh*kw times the input's memory); benchmarks/local_layer.py measures both.
_KEEP_COLS = False

_triton_module: ModuleType | None = None
_triton_checked = False


def _load_triton() -> ModuleType | None:
    """The Triton kernels module, or None when triton is not installed (imported once, lazily)."""
    global _triton_module, _triton_checked
    if not _triton_checked:
        _triton_checked = True
        try:
            from . import triton_local
        except ImportError:  # triton not installed (or not importable): the portable backend only
            triton_local = None
        _triton_module = triton_local
    return _triton_module


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def select_backend(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   backend: str | None = None) -> str:
    """Resolve ``backend`` (or ``$LOCALCONV_LOCAL_BACKEND``, default ``auto``) to 'portable' or 'triton'.

    ``auto`` picks triton for supported CUDA tensors; a forced ``triton`` that cannot run raises
    ValueError saying why. Under ``TRITON_INTERPRET=1`` a forced triton also runs on the CPU.
    """
    source = "backend argument"
    if backend is None:
        backend, source = os.environ.get(BACKEND_ENV, "auto"), f"environment variable {BACKEND_ENV}"
    choice = backend.strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if choice == "portable":
        return "portable"
    forced = choice == "triton"
    if x.device.type != "cuda" and not (forced and _interpreter_on()):
        if forced:
            raise ValueError(f"{source} forces backend 'triton', but the tensors are on {x.device.type} "
                             "(the Triton kernels need CUDA, or TRITON_INTERPRET=1 for testing)")
        return "portable"
    module = _load_triton()
    reason = "triton is not installed" if module is None else module.unsupported_reason(
        x, weight, bias, allow_cpu=_interpreter_on())
    if reason is None:
        return "triton"
    if forced:
        raise ValueError(f"{source} forces backend 'triton', which cannot run this call: {reason}")
    return "portable"


def _check_shapes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: tuple[int, int], pads: tuple[int, int, int, int]) -> None:
    """Raise ValueError stating the expected and actual shapes when they do not fit together."""
    if weight.dim() != 6:
        raise ValueError("weight must be [out_h, out_w, out_channels, in_channels, kh, kw], "
                         f"got shape {list(weight.shape)}")
    oh, ow, o, c, kh, kw = weight.shape
    if x.dim() != 4 or x.shape[1] != c:
        raise ValueError(f"expected input [N, {c}, H, W] (in_channels from the weight), got {list(x.shape)}")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    top, bottom, left, right = pads
    h, w = x.shape[2:]
    expected = (conv_output_size(h, kh, stride[0], top, bottom), conv_output_size(w, kw, stride[1], left, right))
    if expected != (oh, ow):
        raise ValueError(f"input {list(x.shape)} with kernel {(kh, kw)}, stride {stride}, padding "
                         f"(top, bottom, left, right)={pads} gives {expected[0]}x{expected[1]} output positions, "
                         f"but the weight {list(weight.shape)} has {oh}x{ow}")
    if bias is not None and tuple(bias.shape) != (o, oh, ow):
        raise ValueError(f"expected bias [{o}, {oh}, {ow}] (out_channels, out_h, out_w), got {list(bias.shape)}")


def _autocast_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under autocast, cast like F.conv2d does (the casts are differentiable, so fp32 master grads)."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not t.is_floating_point() or t.dtype == torch.float64:
            return t
        return t.to(dtype)

    return cast(x), cast(weight), cast(bias)


class _LocalConv2dFunction(torch.autograd.Function):
    """Shared autograd for both backends; saves the input (or, portable with keep_cols, the columns)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # noqa: ANN001
                stride: tuple[int, int], pads: tuple[int, int, int, int], backend: str,
                keep_cols: bool) -> torch.Tensor:
        geo = local_portable.geometry(x.shape, weight.shape, stride, pads)
        ctx.geo, ctx.memory_format = geo, output_memory_format(x)
        ctx.backend, ctx.keep_cols, ctx.has_bias = backend, keep_cols, bias is not None
        if backend == "triton":
            y = _load_triton().forward(x, weight, bias, stride, (pads[0], pads[2]))
            ctx.save_for_backward(x, weight)
            return y
        cols = local_portable.columns(x, geo) if keep_cols else None
        y = local_portable.forward(x, weight, bias, geo, ctx.memory_format, cols=cols)
        ctx.save_for_backward(cols if keep_cols else x, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # double backward raises instead of being silently wrong
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        saved, weight = ctx.saved_tensors
        geo = ctx.geo
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_b and ctx.has_bias:
            grad_b = grad_out.sum(0)
        if ctx.backend == "triton":
            triton_local = _load_triton()
            top_left = (geo.pads[0], geo.pads[2])
            if need_w:
                grad_w = triton_local.grad_weight(grad_out, saved, list(weight.shape), geo.stride, top_left)
            if need_x:
                grad_x = triton_local.grad_input(grad_out, weight, list(geo.input_shape), geo.stride, top_left,
                                                 ctx.memory_format)
        elif need_x or need_w:
            x, cols = (None, saved) if ctx.keep_cols else (saved, None)
            grad_x, grad_w = local_portable.backward(grad_out, x, weight, geo, need_x, need_w,
                                                     ctx.memory_format, cols=cols)
        return grad_x, grad_w, grad_b, None, None, None, None


def local_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | tuple[int, int] = 1, padding: int | Sequence[int] = 0,
                 backend: str | None = None) -> torch.Tensor:
    """Locally connected 2-D convolution of ``x [N, C, H, W]`` -> ``[N, O, out_h, out_w]``.

    weight: ``[out_h, out_w, out_channels, in_channels, kh, kw]``; bias: ``[out_channels, out_h, out_w]``.
    stride: int or (sh, sw). padding: int, (ph, pw), or (top, bottom, left, right); zeros.
    out size per side = ``floor((in + pad_before + pad_after - k) / stride) + 1``, which must
    match the weight's (out_h, out_w). backend: 'auto' | 'portable' | 'triton' | None (= env var).
    Raises ValueError (stating expected and actual shapes) when the shapes do not fit.
    """
    stride, pads = _pair(stride), _padding4(padding)
    _check_shapes(x, weight, bias, stride, pads)
    x, weight, bias = _autocast_inputs(x, weight, bias)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"input, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}, "
                         f"{bias.dtype if bias is not None else None}")
    chosen = select_backend(x, weight, bias, backend)
    if chosen == "portable":
        return _portable_apply(x, weight, bias, stride, pads)
    return _LocalConv2dFunction.apply(x, weight, bias, stride, pads, chosen, _KEEP_COLS)


@torch.compiler.disable
def _portable_apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                    pads: tuple[int, int, int, int]) -> torch.Tensor:
    # Opaque to torch.compile: tracing the chunk loops unrolls them (compiling cc-11pct took minutes on
    # 2 CPU cores); they are already whole-batch GEMMs, so compiling them gains nothing. (The Triton
    # backend is a custom op, opaque by construction.)
    return _LocalConv2dFunction.apply(x, weight, bias, stride, pads, "portable", _KEEP_COLS)
