"""Fused Triton kernels for the locally connected layer: forward, input gradient, weight gradient.

Imported lazily by :mod:`localconv.nn.functional` (the package works without triton). Each kernel
reads the input through its strides and builds the im2col tile in registers ("implicit GEMM"), so
no unfolded copy of the input is ever stored. Layouts are the public ones::

    x       [N, C, H, W]        (any strides: NCHW, channels_last, sliced views)
    weight  [OH, OW, O, C, KH, KW]  contiguous; per output position l = oh*OW + ow a [O, K] matrix,
                                    K = C*KH*KW in (c, u, v) order
    bias    [O, OH, OW]         contiguous
    y, gy   [N, O, OH, OW]      (any strides)

:mod:`localconv.nn.local_ops` wraps :func:`forward`, :func:`grad_input` and :func:`grad_weight` (with
1-D layers as 2-D layers of height 1, groups as one launch per group) in its custom ops and autograd
Functions. Padding is given as the top/left offsets only: rows/columns past the input
(bottom/right padding) read as zeros, and the output size is the weight's. Dilation is a kernel
argument. Accumulation is fp32 (fp64 for float64, which only the interpreter is allowed to run).

All offsets are 32-bit: :func:`unsupported_reason` refuses tensors of 2**31 elements or more.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .utils import output_memory_format

_INT32_LIMIT = 2**31 - 1
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRETER_DTYPES = SUPPORTED_DTYPES + (torch.float64,)  # float64 only under TRITON_INTERPRET=1 (tests)


@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                    N, C, H, W, O, OW, L,
                    sxn, sxc, sxh, sxw, syn, syo, syh, syw,
                    PT, PL, SH, SW, DH, DW,
                    KH: tl.constexpr, KW: tl.constexpr,
                    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    # One program: output position l, a block of images, a block of output channels.
    # y[n, o, l] = sum_k x_col[n, k, l] * w[l, o, k]: a [BLOCK_N, K] x [K, BLOCK_O] GEMM.
    pid_l = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_o = tl.program_id(2)
    oh = pid_l // OW
    ow = pid_l % OW
    K = C * KH * KW
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    n_mask = offs_n < N
    o_mask = offs_o < O
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    x_rows = x_ptr + offs_n[:, None] * sxn
    w_cols = w_ptr + pid_l * O * K + offs_o[None, :] * K
    acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        c = offs_k // (KH * KW)
        tap = offs_k % (KH * KW)
        ih = ih0 + (tap // KW) * DH
        iw = iw0 + (tap % KW) * DW
        k_in = k_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tile = tl.load(x_rows + (c * sxc + ih * sxh + iw * sxw)[None, :],
                         mask=n_mask[:, None] & k_in[None, :], other=0.0)
        w_tile = tl.load(w_cols + offs_k[:, None], mask=k_mask[:, None] & o_mask[None, :], other=0.0)
        acc = tl.dot(x_tile, w_tile, acc, input_precision=PRECISION)
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_o * L + pid_l, mask=o_mask, other=0.0)
        acc += b[None, :].to(ACC)
    y_ptrs = y_ptr + offs_n[:, None] * syn + offs_o[None, :] * syo + oh * syh + ow * syw
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=n_mask[:, None] & o_mask[None, :])


@triton.jit
def _grad_input_kernel(gy_ptr, w_ptr, gx_ptr,
                       N, C, H, W, O, OH, OW,
                       sgn, sgo, sgh, sgw, sxn, sxc, sxh, sxw,
                       PT, PL, SH, SW, DH, DW,
                       KH: tl.constexpr, KW: tl.constexpr,
                       PRECISION: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr):
    # Gather form (no atomics, deterministic): one program owns input pixel (ih, iw) for a block of
    # images and channels, and sums over the <= KH*KW output positions whose window covers it:
    # gx[n, c, ih, iw] = sum_{taps (u, v)} sum_o gy[n, o, oh, ow] * w[oh, ow, o, c, u, v].
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_c = tl.program_id(2)
    ih = pid_p // W
    iw = pid_p % W
    K = C * KH * KW
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC)
    for u in tl.static_range(KH):
        th = ih + PT - u * DH
        oh = th // SH
        row_ok = (th >= 0) & (th % SH == 0) & (oh < OH)
        for v in tl.static_range(KW):
            tw = iw + PL - v * DW
            ow = tw // SW
            if row_ok & (tw >= 0) & (tw % SW == 0) & (ow < OW):
                gy_rows = gy_ptr + offs_n[:, None] * sgn + oh * sgh + ow * sgw
                w_tap = w_ptr + (oh * OW + ow) * O * K + offs_c[None, :] * (KH * KW) + (u * KW + v)
                for o0 in range(0, O, BLOCK_O):
                    offs_o = o0 + tl.arange(0, BLOCK_O)
                    o_mask = offs_o < O
                    gy_tile = tl.load(gy_rows + offs_o[None, :] * sgo,
                                      mask=n_mask[:, None] & o_mask[None, :], other=0.0)
                    w_tile = tl.load(w_tap + offs_o[:, None] * K,
                                     mask=o_mask[:, None] & c_mask[None, :], other=0.0)
                    acc = tl.dot(gy_tile, w_tile, acc, input_precision=PRECISION)
    gx_ptrs = gx_ptr + offs_n[:, None] * sxn + offs_c[None, :] * sxc + ih * sxh + iw * sxw
    tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=n_mask[:, None] & c_mask[None, :])


@triton.jit
def _grad_weight_kernel(gy_ptr, x_ptr, gw_ptr,
                        N, C, H, W, O, OW,
                        sgn, sgo, sgh, sgw, sxn, sxc, sxh, sxw,
                        PT, PL, SH, SW, DH, DW,
                        KH: tl.constexpr, KW: tl.constexpr,
                        PRECISION: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # gw[l, o, k] = sum_n gy[n, o, l] * x_col[n, k, l]: per position a [O, N] x [N, K] GEMM.
    pid_l = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_k = tl.program_id(2)
    oh = pid_l // OW
    ow = pid_l % OW
    K = C * KH * KW
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    o_mask = offs_o < O
    k_mask = offs_k < K
    c = offs_k // (KH * KW)
    tap = offs_k % (KH * KW)
    ih = oh * SH - PT + (tap // KW) * DH
    iw = ow * SW - PL + (tap % KW) * DW
    k_in = k_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    x_cols = x_ptr + (c * sxc + ih * sxh + iw * sxw)[None, :]
    gy_rows = gy_ptr + offs_o[:, None] * sgo + oh * sgh + ow * sgw
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        gy_tile = tl.load(gy_rows + offs_n[None, :] * sgn, mask=o_mask[:, None] & n_mask[None, :], other=0.0)
        x_tile = tl.load(x_cols + offs_n[:, None] * sxn, mask=n_mask[:, None] & k_in[None, :], other=0.0)
        acc = tl.dot(gy_tile, x_tile, acc, input_precision=PRECISION)
    gw_ptrs = gw_ptr + pid_l * O * K + offs_o[:, None] * K + offs_k[None, :]
    tl.store(gw_ptrs, acc.to(gw_ptr.dtype.element_ty), mask=o_mask[:, None] & k_mask[None, :])


# ----------------------------------------------------------------------------------------------
# Launch heuristics (tl.dot needs every tile side >= 16).


def _bucket(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest of ``sizes`` that covers n, else the largest. Few distinct tile sizes keep the
    number of compiled kernel variants (each a compile of about a second) small."""
    return next((s for s in sizes if n <= s), sizes[-1])


def _acc(dtype: torch.dtype):  # noqa: ANN202
    return tl.float64 if dtype == torch.float64 else tl.float32


def _precision(dtype: torch.dtype) -> str:
    # float32 follows torch's own matmul switch, as the portable backend's bmm does.
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def default_configs(n: int, c: int, o: int, k: int, dtype: torch.dtype) -> dict[str, dict[str, int]]:
    """Tile sizes per kernel; ``launch_*`` accept an override (``config=``) for tuning sweeps.

    Chosen from a sweep on an H200 (benchmarks/gpu_local_layer.py --tune, cc-11pct shapes at
    N=128 and 512): big batches take taller tiles and 8 warps, small ones more programs.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    big = n >= 512
    tile_o, tile_c = _bucket(o, (16, 32, 64)), _bucket(c, (16, 64))
    if n <= 16:
        fwd_n = gin_n = 16
    else:
        fwd_n = (64 if big else 32) if half else (128 if big else 64)
        gin_n = 128 if big else 64
    return {
        "forward": {"BLOCK_N": fwd_n, "BLOCK_O": tile_o, "BLOCK_K": 64 if half else 32, "num_warps": 4},
        "grad_input": {"BLOCK_N": gin_n, "BLOCK_C": tile_c, "BLOCK_O": min(tile_o, 64 if half else 32),
                       "num_warps": 8 if big else 4},
        "grad_weight": {"BLOCK_O": tile_o, "BLOCK_K": 128, "BLOCK_N": 64 if half and big else 32, "num_warps": 8},
    }


def _max_offset(t: torch.Tensor) -> int:
    """Largest element offset a kernel computes for t (its span in storage, for any strides)."""
    return sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def _narrow_offsets(t: torch.Tensor) -> torch.Tensor:
    """t itself, or a contiguous copy when its strides reach past 32-bit offsets (e.g. a gradient
    that is a strided view into a large buffer)."""
    return t if _max_offset(t) <= _INT32_LIMIT else t.contiguous()


def unsupported_reason(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec,  # noqa: ANN001
                       allow_cpu: bool = False) -> str | None:
    """Why these tensors cannot go through the Triton kernels, or None if they can."""
    if x.device.type != "cuda" and not (allow_cpu and x.device.type == "cpu"):
        return f"tensors are on {x.device.type}, the kernels run on CUDA"
    if x.dim() not in (3, 4):
        return f"{x.dim() - 2}-D input (the kernels cover 1-D and 2-D layers; 3-D runs on the portable backend)"
    tensors = [x, weight] + ([bias] if bias is not None else [])
    if any(t.dtype != x.dtype for t in tensors):
        return "input, weight and bias have different dtypes"
    allowed = INTERPRETER_DTYPES if x.device.type == "cpu" else SUPPORTED_DTYPES
    if x.dtype not in allowed:
        return f"dtype {x.dtype} (supported: float32, float16, bfloat16)"
    d = x.dim() - 2
    out_numel = x.shape[0] * math.prod(weight.shape[:d + 1])
    if max(_max_offset(x), weight.numel(), out_numel) > _INT32_LIMIT:
        return "a tensor spans 2**31 elements or more (the kernels use 32-bit offsets)"
    if (x.numel() == 0 or out_numel == 0) and x.shape[0] != 0:  # an empty batch needs no kernel (local_ops)
        return "empty tensor"
    return None


def _as_2d(spec):  # noqa: ANN001, ANN202
    """(stride, (pad_top, pad_left), dilation) of a 1-D or 2-D spec, 1-D as a 2-D call of height 1."""
    if len(spec.stride) == 1:
        return (1, spec.stride[0]), (0, spec.padding[0]), (1, spec.dilation[0])
    return tuple(spec.stride), (spec.padding[0], spec.padding[2]), tuple(spec.dilation)


def launch_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: tuple[int, int], pad_top_left: tuple[int, int], dilation: tuple[int, int] = (1, 1),
                   config: dict[str, int] | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    oh, ow, o, _, kh, kw = weight.shape
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    y = torch.empty((n, o, oh, ow), device=x.device, dtype=x.dtype, memory_format=output_memory_format(x))
    cfg = dict(config or default_configs(n, c, o, c * kh * kw, x.dtype)["forward"])
    num_warps = cfg.pop("num_warps", 4)
    grid = (oh * ow, triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(o, cfg["BLOCK_O"]))
    _forward_kernel[grid](
        x, weight, bias if bias is not None else weight, y,
        n, c, h, w, o, ow, oh * ow,
        *x.stride(), *y.stride(),
        pad_top_left[0], pad_top_left[1], stride[0], stride[1], dilation[0], dilation[1],
        KH=kh, KW=kw,
        HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype), ACC=_acc(x.dtype),
        num_warps=num_warps, **cfg)
    return y


def launch_grad_input(grad_out: torch.Tensor, weight: torch.Tensor, input_shape: list[int],
                      stride: tuple[int, int], pad_top_left: tuple[int, int], dilation: tuple[int, int] = (1, 1),
                      memory_format: torch.memory_format = torch.contiguous_format,
                      config: dict[str, int] | None = None) -> torch.Tensor:
    n, c, h, w = input_shape
    oh, ow, o, _, kh, kw = weight.shape
    weight, grad_out = weight.contiguous(), _narrow_offsets(grad_out)
    gx = torch.empty((n, c, h, w), device=grad_out.device, dtype=grad_out.dtype, memory_format=memory_format)
    cfg = dict(config or default_configs(n, c, o, c * kh * kw, grad_out.dtype)["grad_input"])
    num_warps = cfg.pop("num_warps", 4)
    grid = (h * w, triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(c, cfg["BLOCK_C"]))
    _grad_input_kernel[grid](
        grad_out, weight, gx,
        n, c, h, w, o, oh, ow,
        *grad_out.stride(), *gx.stride(),
        pad_top_left[0], pad_top_left[1], stride[0], stride[1], dilation[0], dilation[1],
        KH=kh, KW=kw, PRECISION=_precision(grad_out.dtype), ACC=_acc(grad_out.dtype),
        num_warps=num_warps, **cfg)
    return gx


def launch_grad_weight(grad_out: torch.Tensor, x: torch.Tensor, weight_shape: list[int],
                       stride: tuple[int, int], pad_top_left: tuple[int, int], dilation: tuple[int, int] = (1, 1),
                       config: dict[str, int] | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    oh, ow, o, _, kh, kw = weight_shape
    k = c * kh * kw
    grad_out = _narrow_offsets(grad_out)
    gw = torch.empty(weight_shape, device=x.device, dtype=x.dtype)
    cfg = dict(config or default_configs(n, c, o, k, x.dtype)["grad_weight"])
    num_warps = cfg.pop("num_warps", 4)
    grid = (oh * ow, triton.cdiv(o, cfg["BLOCK_O"]), triton.cdiv(k, cfg["BLOCK_K"]))
    _grad_weight_kernel[grid](
        grad_out, x, gw,
        n, c, h, w, o, ow,
        *grad_out.stride(), *x.stride(),
        pad_top_left[0], pad_top_left[1], stride[0], stride[1], dilation[0], dilation[1],
        KH=kh, KW=kw, PRECISION=_precision(x.dtype), ACC=_acc(x.dtype),
        num_warps=num_warps, **cfg)
    return gw


# ----------------------------------------------------------------------------------------------
# What localconv.nn.local_ops calls (its custom ops and autograd Functions wrap these): 1-D layers
# run as 2-D layers of height 1 (views), groups as one launch per group on channel slices.


def _weight_2d(weight: torch.Tensor) -> torch.Tensor:
    """``[OL, O, Cg, K]`` -> ``[1, OL, O, Cg, 1, K]`` (a view); 2-D weights as they are."""
    return weight[None, :, :, :, None, :] if weight.dim() == 4 else weight


def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], spec) -> torch.Tensor:  # noqa: ANN001
    stride, top_left, dilation = _as_2d(spec)
    one_d = x.dim() == 3
    x2, w2 = (x.unsqueeze(2) if one_d else x), _weight_2d(weight)
    o, g = w2.shape[2], spec.groups
    if bias is not None:  # shared [O] expanded, untied [O, *out] as [O, OH, OW]
        bias = bias.view(o, 1, 1).expand(o, *w2.shape[:2]) if bias.dim() == 1 else bias.reshape(o, *w2.shape[:2])
    cg, og = w2.shape[3], o // g
    parts = [launch_forward(x2[:, i * cg:(i + 1) * cg], w2[:, :, i * og:(i + 1) * og],
                            bias[i * og:(i + 1) * og] if bias is not None else None, stride, top_left, dilation)
             for i in range(g)]
    y = parts[0] if g == 1 else torch.cat(parts, 1).contiguous(memory_format=output_memory_format(x2))
    return y.squeeze(2) if one_d else y


def grad_input(grad_out: torch.Tensor, weight: torch.Tensor, input_shape: list[int], spec,  # noqa: ANN001
               memory_format: torch.memory_format) -> torch.Tensor:
    stride, top_left, dilation = _as_2d(spec)
    one_d = len(input_shape) == 3
    gy2, w2 = (grad_out.unsqueeze(2) if one_d else grad_out), _weight_2d(weight)
    shape2 = [input_shape[0], input_shape[1], 1, input_shape[2]] if one_d else list(input_shape)
    o, g = w2.shape[2], spec.groups
    cg, og = w2.shape[3], o // g
    parts = [launch_grad_input(gy2[:, i * og:(i + 1) * og], w2[:, :, i * og:(i + 1) * og],
                               [shape2[0], cg, *shape2[2:]], stride, top_left, dilation, memory_format)
             for i in range(g)]
    gx = parts[0] if g == 1 else torch.cat(parts, 1).contiguous(memory_format=memory_format)
    return gx.squeeze(2) if one_d else gx


def grad_weight(grad_out: torch.Tensor, x: torch.Tensor, weight_shape: list[int], spec) -> torch.Tensor:  # noqa: ANN001
    stride, top_left, dilation = _as_2d(spec)
    one_d = x.dim() == 3
    gy2, x2 = (grad_out.unsqueeze(2), x.unsqueeze(2)) if one_d else (grad_out, x)
    shape2 = [1, weight_shape[0], *weight_shape[1:3], 1, weight_shape[3]] if one_d else list(weight_shape)
    o, g = shape2[2], spec.groups
    cg, og = shape2[3], o // g
    parts = [launch_grad_weight(gy2[:, i * og:(i + 1) * og], x2[:, i * cg:(i + 1) * cg],
                                [*shape2[:2], og, *shape2[3:]], stride, top_left, dilation)
             for i in range(g)]
    gw = parts[0] if g == 1 else torch.cat(parts, 2)
    return gw.view(weight_shape)
