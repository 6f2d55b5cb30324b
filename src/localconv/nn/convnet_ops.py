"""cuda-convnet's weight layers and element-wise layers as reusable ``nn.Module`` s.

What distinguishes them from ``nn.Conv2d`` / ``LocallyConnected2d`` / ``nn.Linear``:

* output size per side ``1 + ceil((2*padding + img - filter) / stride)`` (ceil, not floor): the last
  window may hang over the padded edge and reads zeros there (:func:`convnet_output_size`);
* several inputs: each input has its own weights (``weight`` for input 0, ``weight_1``, ``weight_2``...)
  and the contributions are summed before the bias and the neuron;
* ``groups`` (G filter groups, each seeing ``channels / G`` maps) and ``rand_sparse`` (each group
  wired to a fixed random subset of ``filter_channels`` maps, kept in the buffer ``conns`` so it
  is saved and restored with the weights);
* untied biases for convolutions (one per output unit) and weights initialised as
  ``init_w * N(0, 1)`` (not truncated), biases as the constant ``init_b``.

Each weight layer reports ``multiply_adds()``, its forward multiply-adds per image.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .functional import local_conv2d
from .local import LocallyConnected2d


def convnet_output_size(img_size: int, filter_size: int, padding: int = 0, stride: int = 1) -> int:
    """cuda-convnet's ``modulesX``: ``1 + ceil((2*padding + img - filter) / stride)``."""
    return 1 + int(math.ceil((2 * padding + img_size - filter_size) / stride))


def param_name(base: str, index: int) -> str:
    """Name of input ``index``'s tensor: ``weight`` for input 0, then ``weight_1``, ``weight_2``..."""
    return base if index == 0 else f"{base}_{index}"


@dataclass(frozen=True)
class ConvInput:
    """One input of a conv/local layer: its maps, and the filters applied to it.

    ``filter_channels`` is the number of maps each group sees: ``channels // groups`` unless
    ``rand_sparse``, where it may be smaller (``groups * filter_channels`` a multiple of ``channels``).
    """

    channels: int
    img_size: int
    filter_size: int
    padding: int = 0
    stride: int = 1
    groups: int = 1
    filter_channels: int | None = None
    rand_sparse: bool = False
    init_w: float = 0.01

    @property
    def group_channels(self) -> int:
        return self.filter_channels if self.filter_channels is not None else self.channels // self.groups

    @property
    def output_size(self) -> int:
        return convnet_output_size(self.img_size, self.filter_size, self.padding, self.stride)

    @property
    def overhang(self) -> int:
        """Zeros needed after the right/bottom padding so that the last (ceil) window fits."""
        return (self.output_size - 1) * self.stride + self.filter_size - (self.img_size + 2 * self.padding)

    @property
    def padding4(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zeros: the symmetric padding plus the overhang at the end."""
        p, extra = self.padding, self.overhang
        return (p, p + extra, p, p + extra)

    def validate(self, out_channels: int) -> None:
        if min(self.channels, self.img_size, self.filter_size, self.stride, self.groups) < 1 or self.padding < 0:
            raise ValueError(f"invalid conv input {self}")
        if self.filter_size > self.img_size + 2 * self.padding:
            raise ValueError(f"filter size {self.filter_size} exceeds the padded image "
                             f"({self.img_size} + 2*{self.padding})")
        if out_channels % self.groups:
            raise ValueError(f"{out_channels} output maps do not split into {self.groups} groups")
        if self.rand_sparse:
            fc = self.group_channels
            if self.groups < 2:
                raise ValueError("random sparse connectivity needs groups > 1")
            if not 1 <= fc <= self.channels or self.channels % fc:
                raise ValueError(f"filter_channels ({fc}) must divide channels ({self.channels})")
            if (self.groups * fc) % self.channels:
                raise ValueError(f"groups * filter_channels ({self.groups}*{fc}) must be a multiple of "
                                 f"channels ({self.channels})")
        else:
            if self.channels % self.groups:
                raise ValueError(f"channels ({self.channels}) do not split into {self.groups} groups")
            if self.filter_channels is not None and self.filter_channels != self.channels // self.groups:
                raise ValueError("filter_channels is only free with rand_sparse")


def random_connections(inp: ConvInput, generator: torch.Generator | None = None) -> torch.Tensor:
    """cuda-convnet's random wiring: ``groups*filter_channels/channels`` concatenated permutations of
    the input maps; group ``g`` reads entries ``[g*F, (g+1)*F)``. Every map is used equally often."""
    repeats = inp.groups * inp.group_channels // inp.channels
    return torch.cat([torch.randperm(inp.channels, generator=generator) for _ in range(repeats)])


def _check_inputs(inputs: Sequence[ConvInput], out_channels: int) -> int:
    if not inputs:
        raise ValueError("a weight layer needs at least one input")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    for inp in inputs:
        inp.validate(out_channels)
    sizes = {inp.output_size for inp in inputs}
    if len(sizes) != 1:
        raise ValueError(f"all inputs must give the same output size, got {sorted(sizes)}")
    return sizes.pop()


class _MultiInput(nn.Module):
    """Shared plumbing: the per-input random wiring buffers."""

    inputs: tuple[ConvInput, ...]

    def _register_connections(self, generator: torch.Generator | None) -> None:
        for i, inp in enumerate(self.inputs):
            if inp.rand_sparse:
                self.register_buffer(param_name("conns", i), random_connections(inp, generator))

    def _gather(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Input ``i``'s maps in group order: the random wiring if any, else ``x`` itself."""
        if self.inputs[i].rand_sparse:
            return x.index_select(1, getattr(self, param_name("conns", i)))
        return x


class ConvNetConv(_MultiInput):
    """cuda-convnet ``conv`` layer (shared weights); ``shared_biases=False`` gives untied biases
    ``[out_channels, out, out]``. Input ``i``'s weight: ``[out_channels, group_channels, k, k]``."""

    def __init__(self, inputs: Sequence[ConvInput], out_channels: int, shared_biases: bool = True,
                 init_b: float = 0.0, neuron: nn.Module | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.inputs = tuple(inputs)
        self.output_size = _check_inputs(self.inputs, out_channels)
        self.out_channels, self.shared_biases = out_channels, shared_biases
        for i, inp in enumerate(self.inputs):
            w = torch.empty(out_channels, inp.group_channels, inp.filter_size, inp.filter_size)
            nn.init.normal_(w, std=inp.init_w)
            self.register_parameter(param_name("weight", i), nn.Parameter(w))
        self._register_connections(generator)
        o = self.output_size
        self.bias = nn.Parameter(torch.full((out_channels,) if shared_biases else (out_channels, o, o),
                                            float(init_b)))
        self.neuron = neuron if neuron is not None else nn.Identity()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self._conv(0, xs[0], self.bias if self.shared_biases else None)
        for i in range(1, len(self.inputs)):
            y = y + self._conv(i, xs[i], None)
        if not self.shared_biases:
            y = y + self.bias
        return self.neuron(y)

    def _conv(self, i: int, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        inp = self.inputs[i]
        x = self._gather(i, x)
        pad = inp.padding
        if inp.overhang:  # conv2d pads symmetrically only: add the ceil rule's bottom/right zeros ourselves
            x = F.pad(x, inp.padding4)
            pad = 0
        return F.conv2d(x, getattr(self, param_name("weight", i)), bias, inp.stride, pad, 1, inp.groups)

    def multiply_adds(self) -> int:
        per_position = sum(getattr(self, param_name("weight", i)).numel() for i in range(len(self.inputs)))
        return per_position * self.output_size ** 2

    def extra_repr(self) -> str:
        ins = ", ".join(f"{i.channels}x{i.img_size}x{i.img_size} k{i.filter_size} s{i.stride} p{i.padding} g{i.groups}"
                        for i in self.inputs)
        out = f"{self.out_channels}x{self.output_size}x{self.output_size}"
        return f"[{ins}] -> {out}, shared_biases={self.shared_biases}"


class ConvNetLocal(LocallyConnected2d, _MultiInput):
    """cuda-convnet ``local`` layer: a :class:`LocallyConnected2d` with cuda-convnet's ceil output
    size, several inputs, groups and random sparse wiring.

    Input 0's weights are the inherited ``weight`` ``[out, out, out_channels, group_channels, k, k]``
    (further inputs: ``weight_1``...); ``bias`` is ``[out_channels, out, out]`` (one per output unit).
    A single ungrouped input runs :class:`LocallyConnected2d`'s own forward.
    """

    def __init__(self, inputs: Sequence[ConvInput], out_channels: int, init_b: float = 0.0,
                 neuron: nn.Module | None = None, generator: torch.Generator | None = None) -> None:
        inputs = tuple(inputs)
        out = _check_inputs(inputs, out_channels)
        first = inputs[0]
        # LocallyConnected2d uses floor sizes: the ceil rule's overhang becomes extra bottom/right zeros.
        super().__init__(first.group_channels, out_channels, first.img_size, first.filter_size,
                         stride=first.stride, padding=first.padding4, bias=True, init_std=first.init_w)
        self.inputs = inputs
        if tuple(self.output_size) != (out, out):
            raise AssertionError(f"LocallyConnected2d size {self.output_size} != cuda-convnet size {out}")
        for i, inp in enumerate(inputs[1:], start=1):
            w = torch.empty(out, out, out_channels, inp.group_channels, inp.filter_size, inp.filter_size)
            nn.init.normal_(w, std=inp.init_w)
            self.register_parameter(param_name("weight", i), nn.Parameter(w))
        self._register_connections(generator)
        with torch.no_grad():
            self.bias.fill_(float(init_b))
        self.out_size = out
        self._plain = len(inputs) == 1 and first.groups == 1 and not first.rand_sparse
        self.neuron = neuron if neuron is not None else nn.Identity()

    def _grouped(self, i: int, x: torch.Tensor) -> torch.Tensor:
        inp = self.inputs[i]
        x = self._gather(i, x)
        w = getattr(self, param_name("weight", i))
        fc, f = inp.group_channels, self.out_channels // inp.groups
        parts = [local_conv2d(x[:, g * fc:(g + 1) * fc], w[:, :, g * f:(g + 1) * f], None, inp.stride,
                              inp.padding4, backend=self.backend)
                 for g in range(inp.groups)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self._plain:
            return self.neuron(super().forward(xs[0]))
        y = self._grouped(0, xs[0])
        for i in range(1, len(self.inputs)):
            y = y + self._grouped(i, xs[i])
        return self.neuron(y + self.bias)

    def multiply_adds(self) -> int:
        return sum(getattr(self, param_name("weight", i)).numel() for i in range(len(self.inputs)))


class ConvNetFC(nn.Module):
    """cuda-convnet ``fc`` layer: ``sum_i x_i.flatten(1) @ W_i^T + b``; ``weight``/``weight_1``... are
    ``[out_features, in_features_i]``."""

    def __init__(self, in_features: Sequence[int], out_features: int, init_w: Sequence[float] | float = 0.01,
                 init_b: float = 0.0, neuron: nn.Module | None = None) -> None:
        super().__init__()
        in_features = list(in_features)
        init_ws = [float(init_w)] * len(in_features) if isinstance(init_w, (int, float)) else list(init_w)
        if not in_features or len(init_ws) != len(in_features) or out_features < 1 or min(in_features) < 1:
            raise ValueError(f"invalid fc layer: inputs {in_features}, init_w {init_ws}, outputs {out_features}")
        self.in_features, self.out_features = in_features, out_features
        for i, (n_in, std) in enumerate(zip(in_features, init_ws)):
            w = torch.empty(out_features, n_in)
            nn.init.normal_(w, std=std)
            self.register_parameter(param_name("weight", i), nn.Parameter(w))
        self.bias = nn.Parameter(torch.full((out_features,), float(init_b)))
        self.neuron = neuron if neuron is not None else nn.Identity()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = F.linear(xs[0].flatten(1), self.weight, self.bias)
        for i in range(1, len(self.in_features)):
            y = y + F.linear(xs[i].flatten(1), getattr(self, param_name("weight", i)))
        return self.neuron(y)

    def multiply_adds(self) -> int:
        return self.out_features * sum(self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class EltwiseSum(nn.Module):
    """cuda-convnet ``eltsum``: ``sum_i coeffs[i] * x_i``."""

    def __init__(self, coeffs: Sequence[float], neuron: nn.Module | None = None) -> None:
        super().__init__()
        self.coeffs = [float(c) for c in coeffs]
        if not self.coeffs:
            raise ValueError("eltsum needs at least one input")
        self.neuron = neuron if neuron is not None else nn.Identity()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0] * self.coeffs[0] if self.coeffs[0] != 1.0 else xs[0]
        for c, x in zip(self.coeffs[1:], xs[1:]):
            y = y + (x * c if c != 1.0 else x)
        return self.neuron(y)

    def extra_repr(self) -> str:
        return f"coeffs={self.coeffs}"


class EltwiseMax(nn.Module):
    """cuda-convnet ``eltmax``: element-wise maximum of its inputs."""

    def __init__(self, neuron: nn.Module | None = None) -> None:
        super().__init__()
        self.neuron = neuron if neuron is not None else nn.Identity()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0]
        for x in xs[1:]:
            y = torch.maximum(y, x)
        return self.neuron(y)


class FlatSoftmax(nn.Module):
    """cuda-convnet ``softmax``: a softmax over all values of each example (inputs are flattened)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.flatten(1), dim=1)
