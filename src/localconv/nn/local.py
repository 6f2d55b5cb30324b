"""Locally connected layers: convolutions whose filters are not shared across positions, 1-D/2-D/3-D.

``LocallyConnected1d/2d/3d`` share one implementation (:class:`_LocallyConnectedNd`); the ``Lazy``
variants infer ``in_channels`` and ``input_size`` from the first input, as ``nn.LazyConv2d`` does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .functional import BACKENDS, local_conv
from .local_args import check_init_std, is_int, ntuple, output_size, padding_pairs

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnected3d",
           "LazyLocallyConnected1d", "LazyLocallyConnected2d", "LazyLocallyConnected3d"]

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_OUT = {1: "out_l", 2: "out_h, out_w", 3: "out_d, out_h, out_w"}


class _LocallyConnectedNd(nn.Module):
    """Locally connected (unshared-weight) layer over ``_dims`` spatial dimensions.

    Args:
        in_channels, out_channels: channel counts (both divisible by ``groups``).
        input_size: spatial size of the input (int or one per dimension): the number of output
            positions, hence of filter banks, depends on it.
        kernel_size, stride, dilation: int or one per dimension.
        padding: int, one per dimension, ``(before, after)`` per dimension (2-D:
            ``(top, bottom, left, right)``), ``"valid"`` or ``"same"`` (stride 1); zeros.
        bias: add a bias; untied (``[O, *out]``, one per output unit) unless ``shared_bias``.
        init_std: weight init std (cuda-convnet's ``initW``); default ``gain / sqrt(fan_in)`` with
            ``fan_in = in_channels / groups * prod(kernel_size)``, the inputs one output unit sees.
        gain: see ``init_std``.
        backend: None (env ``LOCALCONV_LOCAL_BACKEND``, else auto), 'auto', 'portable' or 'triton'.
        groups: as ``nn.ConvNd``: input and output channels split into groups connected pairwise.
        shared_bias: one bias per output channel (``[O]``) instead of one per output unit.
        device, dtype: of the parameters, as in ``torch.nn``.

    Parameters: ``weight [*out_size, out_channels, in_channels/groups, *kernel_size]``, one grouped
    conv filter bank per output position; ``bias [out_channels, *out_size]`` (or ``[out_channels]``).
    Output size per dimension: ``floor((in + before + after - dilation*(k-1) - 1) / stride) + 1``.
    Input ``[N, C, *input_size]`` or unbatched ``[C, *input_size]``.
    """

    _dims = 0

    def __init__(self, in_channels: int, out_channels: int, input_size: int | Sequence[int] | None,
                 kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | str | Sequence[int] = 0, bias: bool = True, init_std: float | None = None,
                 gain: float = 1.0, backend: str | None = None, *, dilation: int | Sequence[int] = 1,
                 groups: int = 1, shared_bias: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        d = self._dims
        for name, value in (("out_channels", out_channels), ("groups", groups)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        out_channels, groups = int(out_channels), int(groups)
        if out_channels % groups:
            raise ValueError(f"groups={groups} must divide out_channels={out_channels}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
        check_init_std(init_std, gain)
        self.out_channels, self.groups, self.backend = out_channels, groups, backend
        self.kernel_size = ntuple(kernel_size, d, "kernel_size")
        self.stride = ntuple(stride, d, "stride")
        self.dilation = ntuple(dilation, d, "dilation")
        self.padding = padding_pairs(padding, d, self.kernel_size, self.stride, self.dilation)
        self.shared_bias = bool(shared_bias)
        self._init_std_arg, self.gain = (None if init_std is None else float(init_std)), float(gain)
        factory = {"device": device, "dtype": dtype}
        if input_size is None and not isinstance(self, LazyModuleMixin):
            raise ValueError(f"input_size is required (or use Lazy{type(self).__name__}, which infers it)")
        if input_size is None:  # lazy: shapes come with the first input (LazyModuleMixin)
            self.in_channels, self.input_size, self.output_size = 0, None, None
            self.weight = UninitializedParameter(**factory)
            self.bias = UninitializedParameter(**factory) if bias else None
            return
        if not bias:
            self.register_parameter("bias", None)
        self._build(in_channels, input_size, bias, factory)
        self.reset_parameters()

    def _build(self, in_channels: int, input_size: int | Sequence[int], bias: bool, factory: dict) -> None:
        """Check the input-dependent arguments, compute the geometry and create the parameters."""
        self._geometry(in_channels, input_size)
        # an ordinary contiguous parameter on every device (built directly, on meta or lazily): the portable
        # backend makes its faster (taps-last) copy inside the op, per forward (see local_ops)
        self.weight = nn.Parameter(torch.empty(self.weight_shape, **factory))
        self.bias = nn.Parameter(torch.empty(self.bias_shape, **factory)) if bias else None

    def _geometry(self, in_channels: int, input_size: int | Sequence[int]) -> None:
        """Check the input-dependent arguments and set ``in_channels``, ``input_size``, ``output_size``,
        ``fan_in`` and ``init_std``."""
        if not is_int(in_channels) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        in_channels = int(in_channels)
        if in_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels={in_channels}")
        self.in_channels = in_channels
        self.input_size = ntuple(input_size, self._dims, "input_size")
        self.output_size = output_size(self.input_size, self.kernel_size, self.stride, self.padding, self.dilation)
        if min(self.output_size) < 1:
            raise ValueError(f"input {self.input_size}, kernel {self.kernel_size}, stride {self.stride}, dilation "
                             f"{self.dilation}, padding {self.padding} leave no output position "
                             f"({'x'.join(map(str, self.output_size))})")
        self.fan_in = in_channels // self.groups * math.prod(self.kernel_size)
        self.init_std = self._init_std_arg if self._init_std_arg is not None else self.gain / math.sqrt(self.fan_in)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """``[*output_size, out_channels, in_channels/groups, *kernel_size]``."""
        return (*self.output_size, self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        """``[out_channels]`` (shared) or ``[out_channels, *output_size]``."""
        return (self.out_channels,) if self.shared_bias else (self.out_channels, *self.output_size)

    def reset_parameters(self, bias: bool = True) -> None:
        """weight ~ N(0, init_std^2) (not truncated, as cuda-convnet); bias = 0 (unless ``bias=False``)."""
        if isinstance(self.weight, UninitializedParameter):
            return
        nn.init.normal_(self.weight, std=self.init_std)
        if bias and self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self._dims
        expected = (self.in_channels, *self.input_size)
        if x.dim() not in (d + 1, d + 2) or tuple(x.shape[-d - 1:]) != expected:
            sizes = ", ".join(map(str, expected))
            raise ValueError(f"{type(self).__name__}: expected input [N, {sizes}] or [{sizes}], got {list(x.shape)}")
        unbatched = x.dim() == d + 1
        y = local_conv(x.unsqueeze(0) if unbatched else x, self.weight, self.bias, self.stride, self.padding,
                       self.dilation, self.groups, self.backend)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        if self.input_size is None:
            return (f"{self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                    f"padding={self.padding}, uninitialized")
        before, after = self.padding[0::2], self.padding[1::2]
        padding = before if before == after else self.padding
        text = (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={padding}, ")
        if any(dl != 1 for dl in self.dilation):
            text += f"dilation={self.dilation}, "
        if self.groups != 1:
            text += f"groups={self.groups}, "
        text += f"output_size={self.output_size}, weight={list(self.weight.shape)}, bias={self.bias is not None}"
        if self.shared_bias and self.bias is not None:
            text += ", shared_bias=True"
        return text + (f", backend={self.backend!r}" if self.backend is not None else "")


class LocallyConnected1d(_LocallyConnectedNd):
    """1-D locally connected layer (Keras' ``LocallyConnected1D``): input ``[N, C, L]``.

    ``weight [out_l, out_channels, in_channels/groups, k]``, ``bias [out_channels, out_l]``.
    Arguments as :class:`LocallyConnected2d` with one spatial dimension.
    """

    _dims = 1


class LocallyConnected2d(_LocallyConnectedNd):
    """Locally connected (unshared-weight) 2-D layer, cuda-convnet's ``type=local``: input ``[N, C, H, W]``.

    ``weight [out_h, out_w, out_channels, in_channels/groups, kh, kw]``, one ordinary (grouped) conv
    filter bank per output position; ``bias [out_channels, out_h, out_w]`` (or ``[out_channels]``
    with ``shared_bias=True``). ``padding``: int, ``(ph, pw)``, ``(top, bottom, left, right)``,
    ``"valid"`` or ``"same"``. See :class:`_LocallyConnectedNd` for every argument.
    """

    _dims = 2


class LocallyConnected3d(_LocallyConnectedNd):
    """3-D locally connected layer (volumes: video clips, medical scans): input ``[N, C, D, H, W]``.

    ``weight [out_d, out_h, out_w, out_channels, in_channels/groups, kd, kh, kw]``,
    ``bias [out_channels, out_d, out_h, out_w]``.
    """

    _dims = 3


class _LazyLocallyConnectedNd(LazyModuleMixin, _LocallyConnectedNd):
    """``in_channels`` and ``input_size`` come from the first input (``[N, C, *S]`` or ``[C, *S]``)."""

    def __init__(self, out_channels: int, kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | str | Sequence[int] = 0, bias: bool = True, init_std: float | None = None,
                 gain: float = 1.0, backend: str | None = None, *, dilation: int | Sequence[int] = 1,
                 groups: int = 1, shared_bias: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(0, out_channels, None, kernel_size, stride, padding, bias, init_std, gain, backend,
                         dilation=dilation, groups=groups, shared_bias=shared_bias, device=device, dtype=dtype)
        self._factory = {"device": device, "dtype": dtype}

    def initialize_parameters(self, x: torch.Tensor) -> None:  # called by LazyModuleMixin before forward
        """Infer ``in_channels`` and ``input_size`` from the first input; create and initialize the parameters,
        or, where ``load_state_dict`` already gave them values (as ``nn.LazyConv2d`` allows), check their
        shapes against the geometry (ValueError naming the parameter on a mismatch) and keep them."""
        if self.input_size is not None:
            return
        d = self._dims
        if x.dim() not in (d + 1, d + 2):
            raise ValueError(f"{type(self).__name__}: expected input [N, C, {_SPATIAL[d]}] or [C, {_SPATIAL[d]}], "
                             f"got {list(x.shape)}")
        loaded = {name: param for name, param in (("weight", self.weight), ("bias", self.bias))
                  if param is not None and not isinstance(param, UninitializedParameter)}
        with torch.no_grad():
            self._geometry(int(x.shape[-d - 1]), tuple(int(s) for s in x.shape[-d:]))
            expected = {"weight": self.weight_shape, "bias": self.bias_shape}
            for name, param in loaded.items():
                if tuple(param.shape) != expected[name]:
                    geometry = (self.in_channels, self.input_size, self.output_size)
                    self.in_channels, self.input_size, self.output_size = 0, None, None  # still lazy
                    raise ValueError(
                        f"{type(self).__name__}: the loaded {name} has shape {list(param.shape)}, but the first "
                        f"input {list(x.shape)} needs {list(expected[name])} (in_channels={geometry[0]}, "
                        f"input_size={geometry[1]}, output_size={geometry[2]})")
            factory = {k: v for k, v in self._factory.items() if v is not None}
            for name, param in (("weight", self.weight), ("bias", self.bias)):
                if isinstance(param, UninitializedParameter):
                    param.materialize(expected[name], **factory)
            if "weight" not in loaded:
                self.reset_parameters(bias="bias" not in loaded)
            elif self.bias is not None and "bias" not in loaded:
                nn.init.zeros_(self.bias)


class LazyLocallyConnected1d(_LazyLocallyConnectedNd):
    """:class:`LocallyConnected1d` with ``in_channels`` and ``input_size`` inferred from the first input."""

    _dims = 1
    cls_to_become = LocallyConnected1d


class LazyLocallyConnected2d(_LazyLocallyConnectedNd):
    """:class:`LocallyConnected2d` with ``in_channels`` and ``input_size`` inferred from the first input."""

    _dims = 2
    cls_to_become = LocallyConnected2d


class LazyLocallyConnected3d(_LazyLocallyConnectedNd):
    """:class:`LocallyConnected3d` with ``in_channels`` and ``input_size`` inferred from the first input."""

    _dims = 3
    cls_to_become = LocallyConnected3d
