"""One builder per cuda-convnet layer type: cfg values + input shapes -> module + output shape.

Each builder reads its section (:class:`SectionValues`) and, where the type has learning
parameters, the matching section of the layer-parameter file; it checks what cuda-convnet checks
(channel counts, sizes, groups) and reports problems as ``ConfigError`` at the line at fault.
The graph-level work (order, inputs, cycles, the cost layer) is in :mod:`.builder`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from ..nn.convnet_ops import ConvInput, ConvNetConv, ConvNetFC, ConvNetLocal, EltwiseMax, EltwiseSum, FlatSoftmax
from ..nn.norm import ContrastNorm, CrossMapNorm, ResponseNorm
from ..nn.pool import ConvNetPool, pool_output_size, window_counts
from .memory import MemoryBudget
from .values import SectionValues

# Largest tensor we agree to allocate (elements): beyond it 32-bit indexing breaks in many kernels.
MAX_TENSOR_ELEMENTS = 2 ** 31 - 1

WITH_INPUTS = {"type", "inputs"}
WEIGHT_KEYS = {"channels", "filters", "filterSize", "padding", "stride", "groups", "randSparse", "filterChannels",
               "initW", "initB", "neuron"}
NORM_KEYS = {"size", "sizeX", "channels", "scale", "pow", "neuron"}
LAYER_KEYS: dict[str, set[str]] = {
    "data": {"type", "dataIdx"},
    "conv": WITH_INPUTS | WEIGHT_KEYS | {"sharedBiases", "partialSum"},
    "local": WITH_INPUTS | WEIGHT_KEYS,
    "fc": WITH_INPUTS | {"outputs", "initW", "initB", "neuron"},
    "pool": WITH_INPUTS | {"pool", "sizeX", "stride", "start", "outputsX", "channels", "neuron"},
    "cmrnorm": WITH_INPUTS | NORM_KEYS | {"blocked"},
    "rnorm": WITH_INPUTS | NORM_KEYS,
    "cnorm": WITH_INPUTS | NORM_KEYS,
    "neuron": WITH_INPUTS | {"neuron"},
    "softmax": set(WITH_INPUTS),
    "eltsum": WITH_INPUTS | {"coeffs", "neuron"},
    "eltmax": WITH_INPUTS | {"neuron"},
    "cost.logreg": set(WITH_INPUTS),
}
WEIGHT_PARAM_KEYS = {"epsW", "epsB", "momW", "momB", "wc"}
PARAM_KEYS: dict[str, set[str]] = {t: set() for t in LAYER_KEYS}
PARAM_KEYS.update({"conv": WEIGHT_PARAM_KEYS, "local": WEIGHT_PARAM_KEYS, "fc": WEIGHT_PARAM_KEYS,
                   "cmrnorm": {"scale", "pow"}, "rnorm": {"scale", "pow"}, "cnorm": {"scale", "pow"},
                   "cost.logreg": {"coeff"}})
WEIGHT_TYPES = ("conv", "local", "fc")
NORM_TYPES = ("cmrnorm", "rnorm", "cnorm")
# Keys of cuda-convnet (or its successors) that we recognise but do not implement.
UNSUPPORTED = {
    "weightSource": "weight sharing between layers is not supported",
    "initWFunc": "Python initialisation functions are not supported; use initW",
    "initBFunc": "Python initialisation functions are not supported; use initB",
    "initCFunc": "Python connectivity functions are not supported",
    "gpu": "multi-GPU placement is not supported",
    "sumWidth": "cuda-convnet2's option; this format is cuda-convnet's (use partialSum or nothing)",
    "dropout": "dropout is not part of cuda-convnet's layer format",
}


@dataclass(frozen=True)
class Shape:
    """A layer's output per image: ``channels`` maps of ``size x size``, or a flat vector of
    ``channels`` values (``size == 0``); ``labels`` marks the label data layer."""

    channels: int
    size: int = 0
    labels: bool = False

    @property
    def features(self) -> int:
        return self.channels * self.size * self.size if self.size else self.channels

    def describe(self) -> str:
        if self.labels:
            return "labels"
        return f"{self.channels}x{self.size}x{self.size}" if self.size else f"{self.channels}"


@dataclass(frozen=True)
class Source:
    """An input of the layer being built."""

    name: str
    type: str
    shape: Shape


@dataclass(frozen=True)
class Learn:
    """Learning hyperparameters of one parameter tensor of a layer (an optimizer group)."""

    param: str
    lr: float
    momentum: float
    wc: float


@dataclass
class BuiltLayer:
    name: str
    type: str
    shape: Shape
    module: nn.Module | None = None
    views: list[tuple[int, int, int] | None] = field(default_factory=list)
    learn: list[Learn] = field(default_factory=list)
    loss_coeff: float | None = None


@dataclass
class LayerContext:
    name: str
    type: str
    values: SectionValues
    params: SectionValues | None  # this layer's section in the params file, if any
    sources: list[Source]
    crop: int
    structure_only: bool  # no params file at all: build the structure, skip learning parameters
    params_file: str | None  # name of the params file; None when there is none
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(limit=None))

    def error_at(self, key: str | None, message: str) -> ConfigError:
        return self.values.error(message, key)

    def reserve(self, key: str | None, params: int, activations: int) -> None:
        """Count this layer's memory before its module is allocated; refuse it at ``key``'s line
        if the network would no longer fit (:mod:`.memory`)."""
        problem = self.budget.problem(self.name, params, activations)
        if problem:
            raise self.error_at(key, problem)


# ----------------------------------------------------------------------------------------------
# shared helpers

def _image_view(ctx: LayerContext, index: int,
                channels: int | None) -> tuple[Shape, tuple[int, int, int] | None]:
    """Input ``index`` as images; a flat input is read as ``channels`` square maps (as cuda-convnet)."""
    src = ctx.sources[index]
    if src.shape.size:
        if channels is not None and channels != src.shape.channels:
            raise ctx.error_at("channels", f"channels={channels} but input '{src.name}' has "
                                           f"{src.shape.channels} channels ({src.shape.describe()})")
        return src.shape, None
    if channels is None:
        raise ctx.error_at("inputs", f"input '{src.name}' is a flat vector of {src.shape.features} values; "
                                     f"give channels= to read it as square images")
    side = math.isqrt(src.shape.features // channels) if src.shape.features % channels == 0 else 0
    if side == 0 or channels * side * side != src.shape.features:
        raise ctx.error_at("channels", f"channels={channels} but input '{src.name}' has "
                                       f"{src.shape.features} values: not {channels} square maps")
    return Shape(channels, side), (channels, side, side)


def _check_size(ctx: LayerContext, elements: int, what: str) -> None:
    if elements > MAX_TENSOR_ELEMENTS:
        raise ctx.error_at(None, f"{what} would have {elements:,} elements (limit {MAX_TENSOR_ELEMENTS:,})")


def _module(ctx: LayerContext, make: Callable[[], nn.Module]) -> nn.Module:
    # The builders check everything the modules check; this turns any check we missed into a
    # ConfigError at the section rather than a traceback.
    try:
        return make()
    except ValueError as exc:
        raise ctx.error_at(None, str(exc)) from None


def _weight_learning(ctx: LayerContext, n_inputs: int, weight_names: list[str]) -> list[Learn]:
    """epsW/momW/wc (one per input, or one for all) and epsB/momB from the params file."""
    if ctx.params is None:
        if ctx.structure_only:
            return []
        if ctx.params_file is None:
            raise ctx.error_at(None, f"{ctx.type} layer has weights, so it needs learning parameters "
                                     "(epsW, epsB, momW, momB, wc): give a layer-parameter file (--params)")
        raise ctx.error_at(None, f"{ctx.type} layer has weights but no [{ctx.name}] section in {ctx.params_file}")
    p = ctx.params
    eps_w = p.numbers("epsW", n_inputs, lo=0.0)
    mom_w = p.numbers("momW", n_inputs, lo=0.0)
    wc = p.numbers("wc", n_inputs, lo=0.0)
    eps_b, mom_b = p.number("epsB", lo=0.0), p.number("momB", lo=0.0)
    learn = [Learn(w, e, m, c) for w, e, m, c in zip(weight_names, eps_w, mom_w, wc)]
    return learn + [Learn("bias", eps_b, mom_b, 0.0)]


def _weight_names(n_inputs: int) -> list[str]:
    return ["weight"] + [f"weight_{i}" for i in range(1, n_inputs)]


# ----------------------------------------------------------------------------------------------
# layer types

def build_data(ctx: LayerContext) -> BuiltLayer:
    idx = ctx.values.integer("dataIdx")
    if idx not in (0, 1):
        raise ctx.error_at("dataIdx", f"dataIdx={idx}: the CIFAR-10 provider has 0 (images) and 1 (labels)")
    shape = Shape(3, ctx.crop) if idx == 0 else Shape(1, 0, labels=True)
    return BuiltLayer(ctx.name, ctx.type, shape)


def build_conv_or_local(ctx: LayerContext) -> BuiltLayer:
    v, k = ctx.values, len(ctx.sources)
    channels = v.integers("channels", k, lo=1)
    filters = v.integers("filters", k, lo=1)
    filter_size = v.integers("filterSize", k, lo=1)
    padding = v.integers("padding", k, default=0, lo=0)
    stride = v.integers("stride", k, default=1, lo=1)
    groups = v.integers("groups", k, default=1, lo=1)
    sparse = v.booleans("randSparse", k, default=False)
    init_w = v.numbers("initW", k, default=0.01, lo=0.0)
    init_b = v.number("initB", default=0.0)
    neuron = v.neuron()
    shared_biases = v.boolean("sharedBiases", default=True) if ctx.type == "conv" else False
    if ctx.type == "conv":
        v.integer("partialSum", default=0, lo=0)  # cuda-convnet speed option: checked, then ignored
    default_fc = [c // g for c, g in zip(channels, groups)]
    if any(sparse):
        filter_channels = v.integers("filterChannels", k, default=default_fc, lo=1)
    elif v.has("filterChannels"):
        raise ctx.error_at("filterChannels", "filterChannels applies only with randSparse=1")
    else:
        filter_channels = default_fc

    inputs, views = [], []
    for i in range(k):
        shape, view = _image_view(ctx, i, channels[i])
        views.append(view)
        if filter_size[i] > shape.size + 2 * padding[i]:
            raise ctx.error_at("filterSize", f"filterSize={filter_size[i]} exceeds the padded image of input "
                                             f"'{ctx.sources[i].name}' ({shape.size} + 2*{padding[i]})")
        if sparse[i]:
            fc = filter_channels[i]
            if groups[i] < 2:
                raise ctx.error_at("randSparse", "randSparse=1 needs groups > 1")
            if fc > channels[i] or channels[i] % fc:
                raise ctx.error_at("filterChannels", f"filterChannels={fc} must divide channels={channels[i]}")
            if (groups[i] * fc) % channels[i]:
                raise ctx.error_at("filterChannels", f"groups*filterChannels ({groups[i]}*{fc}) must be a "
                                                     f"multiple of channels ({channels[i]})")
        elif channels[i] % groups[i]:
            raise ctx.error_at("groups", f"channels={channels[i]} do not split into groups={groups[i]}")
        inputs.append(ConvInput(channels[i], shape.size, filter_size[i], padding[i], stride[i], groups[i],
                                filter_channels[i] if sparse[i] else None, sparse[i], init_w[i]))

    out_maps = {f * g for f, g in zip(filters, groups)}
    if len(out_maps) != 1:
        raise ctx.error_at("filters", f"filters*groups differ between inputs: {sorted(out_maps)}")
    sizes = [inp.output_size for inp in inputs]
    if len(set(sizes)) != 1:
        listed = ", ".join(f"{s}x{s} from '{src.name}'" for s, src in zip(sizes, ctx.sources))
        raise ctx.error_at("inputs", f"inputs give different output sizes: {listed}")
    out_channels, out = out_maps.pop(), sizes[0]
    n_params = out_channels if shared_biases else out_channels * out * out
    for inp in inputs:
        per_bank = out_channels * inp.group_channels * inp.filter_size ** 2
        n_weights = per_bank * (out * out if ctx.type == "local" else 1)
        _check_size(ctx, n_weights, "a weight tensor")
        n_params += n_weights
    ctx.reserve("filters", n_params, out_channels * out * out)
    if ctx.type == "conv":
        module = _module(ctx, lambda: ConvNetConv(inputs, out_channels, shared_biases, init_b, neuron))
    else:
        module = _module(ctx, lambda: ConvNetLocal(inputs, out_channels, init_b, neuron))
    learn = _weight_learning(ctx, k, _weight_names(k))
    return BuiltLayer(ctx.name, ctx.type, Shape(out_channels, out), module, views, learn)


def build_fc(ctx: LayerContext) -> BuiltLayer:
    v, k = ctx.values, len(ctx.sources)
    outputs = v.integer("outputs", lo=1)
    init_w = v.numbers("initW", k, default=0.01, lo=0.0)
    init_b = v.number("initB", default=0.0)
    neuron = v.neuron()
    in_features = [src.shape.features for src in ctx.sources]
    for n in in_features:
        _check_size(ctx, n * outputs, "a weight matrix")
    ctx.reserve("outputs", sum(in_features) * outputs + outputs, outputs)
    module = _module(ctx, lambda: ConvNetFC(in_features, outputs, init_w, init_b, neuron))
    learn = _weight_learning(ctx, k, _weight_names(k))
    return BuiltLayer(ctx.name, ctx.type, Shape(outputs), module, [None] * k, learn)


def build_pool(ctx: LayerContext) -> BuiltLayer:
    v = ctx.values
    mode = v.text("pool", choices=("max", "avg"))
    size = v.integer("sizeX", lo=1)
    stride = v.integer("stride", lo=1)
    start = v.integer("start", default=0)
    outputs = v.integer("outputsX", default=0, lo=0)
    channels = v.integer("channels", default=None, lo=1)
    neuron = v.neuron()
    shape, view = _image_view(ctx, 0, channels)
    if size > shape.size:
        raise ctx.error_at("sizeX", f"sizeX={size} is larger than the {shape.size}x{shape.size} input")
    if stride > size:
        raise ctx.error_at("stride", f"stride={stride} must be <= sizeX={size}")
    n_out = outputs or pool_output_size(shape.size, size, stride, start)
    if n_out < 1 or min(window_counts(shape.size, size, stride, start, n_out)) <= 0:
        key = "outputsX" if outputs else "start"
        raise ctx.error_at(key, f"with start={start}, sizeX={size}, stride={stride}, outputsX={n_out} some "
                                f"pooling windows fall entirely outside the {shape.size}x{shape.size} input")
    module = _module(ctx, lambda: ConvNetPool(mode, size, stride, shape.size, start, n_out, neuron))
    return BuiltLayer(ctx.name, ctx.type, Shape(shape.channels, n_out), module, [view])


def _norm_constant(ctx: LayerContext, key: str) -> float:
    """``scale``/``pow`` from the params file, or (older files) from the layer file; not both."""
    params, in_layers = ctx.params, ctx.values.item(key)
    if params is not None and params.has(key):
        if in_layers:
            raise params.error(f"'{key}' is also set in the layer file (line {in_layers.line}); keep one", key)
        return params.number(key, lo=0.0)
    if in_layers:
        return ctx.values.number(key, lo=0.0)
    if ctx.structure_only:
        return 0.0  # summary without a params file: shapes and counts do not depend on it
    where = f"[{ctx.name}] of {ctx.params_file}" if ctx.params_file else "a layer-parameter file (--params)"
    raise ctx.error_at(None, f"{ctx.type} layer needs '{key}': set it in {where}")


def build_norm(ctx: LayerContext) -> BuiltLayer:
    v = ctx.values
    if v.has("size") and v.has("sizeX"):
        raise ctx.error_at("sizeX", "give the window as size= or (older files) sizeX=, not both")
    size_key = "sizeX" if v.has("sizeX") else "size"
    size = v.integer(size_key, lo=1)
    channels = v.integer("channels", default=None, lo=1)
    blocked = v.boolean("blocked", default=False) if ctx.type == "cmrnorm" else False
    neuron = v.neuron()
    shape, view = _image_view(ctx, 0, channels)
    if ctx.type == "cmrnorm" and size > shape.channels:
        raise ctx.error_at(size_key, f"{size_key}={size} exceeds the {shape.channels} input maps")
    if ctx.type != "cmrnorm" and size > shape.size:
        raise ctx.error_at(size_key, f"{size_key}={size} exceeds the {shape.size}x{shape.size} input")
    scale, power = _norm_constant(ctx, "scale"), _norm_constant(ctx, "pow")
    if ctx.type == "cmrnorm":
        module = _module(ctx, lambda: CrossMapNorm(size, scale, power, blocked, neuron))
    elif ctx.type == "rnorm":
        module = _module(ctx, lambda: ResponseNorm(size, scale, power, neuron))
    else:
        module = _module(ctx, lambda: ContrastNorm(size, scale, power, neuron))
    return BuiltLayer(ctx.name, ctx.type, shape, module, [view])


def build_neuron(ctx: LayerContext) -> BuiltLayer:
    module = ctx.values.neuron(required=True)
    return BuiltLayer(ctx.name, ctx.type, ctx.sources[0].shape, module, [None])


def build_softmax(ctx: LayerContext) -> BuiltLayer:
    return BuiltLayer(ctx.name, ctx.type, Shape(ctx.sources[0].shape.features), FlatSoftmax(), [None])


def build_eltwise(ctx: LayerContext) -> BuiltLayer:
    shapes = {src.shape for src in ctx.sources}
    if len(shapes) != 1:
        listed = ", ".join(f"'{s.name}' {s.shape.describe()}" for s in ctx.sources)
        raise ctx.error_at("inputs", f"inputs must have the same shape, got {listed}")
    neuron = ctx.values.neuron()
    if ctx.type == "eltsum":
        coeffs = ctx.values.numbers("coeffs", len(ctx.sources), default=1.0)
        module = _module(ctx, lambda: EltwiseSum(coeffs, neuron))
    else:
        module = _module(ctx, lambda: EltwiseMax(neuron))
    return BuiltLayer(ctx.name, ctx.type, shapes.pop(), module, [None] * len(ctx.sources))


def build_logreg(ctx: LayerContext) -> BuiltLayer:
    labels, probs = ctx.sources
    if not labels.shape.labels:
        raise ctx.error_at("inputs", f"first input '{labels.name}' must be the label data layer (dataIdx=1)")
    if probs.type != "softmax":
        raise ctx.error_at("inputs", f"second input '{probs.name}' must be a softmax layer, not {probs.type}")
    coeff = ctx.params.number("coeff", default=1.0) if ctx.params is not None else 1.0
    return BuiltLayer(ctx.name, ctx.type, Shape(1), loss_coeff=coeff)


Builder = Callable[[LayerContext], BuiltLayer]
# type -> (builder, min inputs, max inputs); data layers take no inputs
LAYER_BUILDERS: dict[str, tuple[Builder, int, int | None]] = {
    "data": (build_data, 0, 0),
    "conv": (build_conv_or_local, 1, None),
    "local": (build_conv_or_local, 1, None),
    "fc": (build_fc, 1, None),
    "pool": (build_pool, 1, 1),
    "cmrnorm": (build_norm, 1, 1),
    "rnorm": (build_norm, 1, 1),
    "cnorm": (build_norm, 1, 1),
    "neuron": (build_neuron, 1, 1),
    "softmax": (build_softmax, 1, 1),
    "eltsum": (build_eltwise, 1, None),
    "eltmax": (build_eltwise, 2, None),
    "cost.logreg": (build_logreg, 2, 2),
}
assert set(LAYER_BUILDERS) == set(LAYER_KEYS)

