"""Functional locally connected (unshared-weight) convolutions, 1-D/2-D/3-D.

``local_conv2d(x, weight, bias, stride, padding, dilation=1, groups=1, backend=None)`` computes, for every output
position (i, j)::

    y[n, g*O/G + o', i, j] = sum_{c', u, v} weight[i, j, g*O/G + o', c', u, v]
                              * xpad[n, g*C/G + c', i*sh + u*dh, j*sw + v*dw] + bias[g*O/G + o', i, j]

with ``weight [out_h, out_w, out_channels, in_channels/groups, kh, kw]`` (one ordinary grouped conv
filter bank per output position) and ``bias [out_channels, out_h, out_w]`` (untied) or
``[out_channels]`` (shared). ``local_conv1d``/``local_conv3d`` are the same with one/three spatial
dimensions (weight ``[*out, O, C/groups, *kernel]``).

Two backends compute it, behind differentiable ops (:mod:`localconv.nn.local_ops`):

* ``portable`` (any device): im2col + batched matmul over output positions, in chunks of rows,
  :mod:`localconv.nn.local_portable`;
* ``triton`` (CUDA, 1-D and 2-D): fused implicit-GEMM kernels, :mod:`localconv.nn.triton_local`.

``backend=None`` reads ``LOCALCONV_LOCAL_BACKEND`` (default ``auto``: triton on CUDA when importable
and the call is supported, else portable).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType

import torch

from . import local_ops
from .local_args import check_call, ntuple, padding_pairs
from .utils import _pair

__all__ = ["local_conv1d", "local_conv2d", "local_conv3d", "local_conv", "select_backend", "BACKENDS",
           "BACKEND_ENV", "_pair"]

BACKENDS = ("auto", "portable", "triton")
BACKEND_ENV = "LOCALCONV_LOCAL_BACKEND"

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
                   backend: str | None = None, spec: local_ops.Spec | None = None) -> str:
    """Resolve ``backend`` (or ``$LOCALCONV_LOCAL_BACKEND``, default ``auto``) to 'portable' or 'triton'.

    ``auto`` picks triton for supported CUDA tensors; a forced ``triton`` that cannot run raises
    ValueError saying why. Under ``TRITON_INTERPRET=1`` a forced triton also runs on the CPU.
    """
    source = "backend argument"
    if backend is None:
        backend, source = os.environ.get(BACKEND_ENV, "auto"), f"environment variable {BACKEND_ENV}"
    if not isinstance(backend, str):
        raise ValueError(f"backend must be None or one of {', '.join(BACKENDS)}, got {backend!r}")
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
    dims = x.dim() - 2
    if spec is None:
        spec = local_ops.Spec((1,) * dims, (0,) * (2 * dims), (1,) * dims, 1)
    reason = "triton is not installed" if module is None else module.unsupported_reason(
        x, weight, bias, spec, allow_cpu=_interpreter_on())
    if reason is None:
        return "triton"
    if forced:
        raise ValueError(f"{source} forces backend 'triton', which cannot run this call: {reason}")
    return "portable"


def _autocast_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under autocast, cast like F.conv2d does (the casts are differentiable, so fp32 master grads)."""
    device_type = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device without autocast (meta: shape inference, as F.conv2d allows)
        enabled = False
    if not enabled:
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not t.is_floating_point() or t.dtype == torch.float64:
            return t
        return t.to(dtype)

    return cast(x), cast(weight), cast(bias)


def local_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               stride: int | Sequence[int] = 1, padding: int | str | Sequence[int] = 0,
               dilation: int | Sequence[int] = 1, groups: int = 1, backend: str | None = None) -> torch.Tensor:
    """Locally connected convolution with ``d = weight.dim() // 2 - 1`` spatial dimensions.

    x ``[N, C, *S]``; weight ``[*out, O, C/groups, *kernel]``; bias ``[O, *out]`` or ``[O]``.
    stride, dilation: int or d ints. padding: int, d ints, 2*d ints (before, after per dimension),
    'valid' or 'same'. Output size per dimension
    ``floor((in + before + after - dilation*(k - 1) - 1) / stride) + 1`` must be the weight's.
    Raises ValueError (stating expected and actual shapes) when the shapes do not fit.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (4, 6, 8):
        shape = list(weight.shape) if isinstance(weight, torch.Tensor) else repr(weight)
        raise ValueError(f"weight must be [*out, out_channels, in_channels/groups, *kernel] with 1, 2 or 3 spatial "
                         f"dimensions (4, 6 or 8 dimensions), got {shape}")
    for name, value in (("dilation", dilation), ("groups", groups)):
        if isinstance(value, str):  # e.g. a backend name where local_conv2d once took it (sixth)
            raise ValueError(f"{name} must be an int or ints, got {value!r} (pass the backend as backend=...)")
    dims = weight.dim() // 2 - 1
    kernel = tuple(weight.shape[dims + 2:])
    stride_t = ntuple(stride, dims, "stride")
    dilation_t = ntuple(dilation, dims, "dilation")
    pads = padding_pairs(padding, dims, kernel, stride_t, dilation_t)
    check_call(x, weight, bias, dims, stride_t, pads, dilation_t, groups)
    x, weight, bias = _autocast_inputs(x, weight, bias)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"input, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}, "
                         f"{bias.dtype if bias is not None else None}")
    spec = local_ops.Spec(stride_t, pads, dilation_t, int(groups))
    return local_ops.apply(x, weight, bias, spec, select_backend(x, weight, bias, backend, spec))


def _dims_checked(weight: torch.Tensor, dims: int, name: str) -> None:
    if weight.dim() != 2 + 2 * dims:
        raise ValueError(f"{name}: weight must have {2 + 2 * dims} dimensions "
                         f"([*out, out_channels, in_channels/groups, *kernel]), got shape {list(weight.shape)}")


def local_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | Sequence[int] = 1, padding: int | str | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, backend: str | None = None) -> torch.Tensor:
    """``x [N, C, L]``, ``weight [out_l, O, C/groups, k]``, bias ``[O, out_l]`` or ``[O]``; see :func:`local_conv`."""
    _dims_checked(weight, 1, "local_conv1d")
    return local_conv(x, weight, bias, stride, padding, dilation, groups, backend)


def local_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | Sequence[int] = 1, padding: int | str | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, backend: str | None = None) -> torch.Tensor:
    """``x [N, C, H, W]``, ``weight [out_h, out_w, O, C/groups, kh, kw]``, bias ``[O, out_h, out_w]`` or ``[O]``.

    padding: int, (ph, pw), (top, bottom, left, right), 'valid' or 'same'. See :func:`local_conv`.
    The positional order is that of ``local_conv1d``/``local_conv3d`` and ``F.conv2d`` (then ``backend``).
    """
    _dims_checked(weight, 2, "local_conv2d")
    return local_conv(x, weight, bias, stride, padding, dilation, groups, backend)


def local_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | Sequence[int] = 1, padding: int | str | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, backend: str | None = None) -> torch.Tensor:
    """``x [N, C, D, H, W]``, ``weight [out_d, out_h, out_w, O, C/groups, kd, kh, kw]``; see :func:`local_conv`."""
    _dims_checked(weight, 3, "local_conv3d")
    return local_conv(x, weight, bias, stride, padding, dilation, groups, backend)
