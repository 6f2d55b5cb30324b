"""Build a :class:`CfgNet` from a cuda-convnet layer-definition file and layer-parameter file.

Stages, each reporting the first problem as ``ConfigError`` (``FILE:LINE: [section] message``):

1. parse both files (:func:`parse_cfg`);
2. the graph: every section's ``type`` and keys, its ``inputs`` (names of other sections), no cycles,
   exactly one ``cost.logreg`` layer, no layer left unused (as cuda-convnet);
3. the params file: every section names a layer and holds only that type's keys;
4. each layer in dependency order (:mod:`.layers`): shapes from the data layer (``crop`` x ``crop``
   images), channel checks, modules, learning parameters;
5. the model: the logits are the input of the softmax that feeds the cost layer.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from ..models.base import check_num_classes
from .layers import LAYER_BUILDERS, LAYER_KEYS, PARAM_KEYS, UNSUPPORTED, BuiltLayer, LayerContext, Source
from .memory import MemoryBudget
from .net import CfgNet, LearningGroup, LogitsSource, PlanStep, check_layer_name
from .parser import CfgFile, CfgItem, clip, parse_cfg
from .values import SectionValues

# num_classes: set by the shipped networks' factories (the logits fc's outputs follow the data);
# absent in specs written before it existed, which means "as the file says".
SPEC_KEYS = ("layers_text", "params_text", "layers_name", "params_name", "crop", "flip", "structure_only",
             "num_classes")


@dataclass
class LayerGraph:
    types: dict[str, str]
    inputs: dict[str, list[str]]
    order: list[str]  # dependencies first; ties in file order


def _values(cfg: CfgFile, name: str) -> SectionValues:
    return SectionValues(cfg.sections[name])


def resolve_graph(layers: CfgFile) -> LayerGraph:
    """Types, keys and inputs of every section; a dependency order; the single cost layer."""
    if not layers.sections:
        raise ConfigError("no layers defined", file=layers.name, line=layers.num_lines)
    types: dict[str, str] = {}
    for name, section in layers.sections.items():
        values = SectionValues(section)
        kind = values.text("type")
        if kind not in LAYER_KEYS:
            raise values.error(f"unknown layer type '{clip(kind)}'; known: {', '.join(LAYER_KEYS)}", "type")
        values.check_keys(LAYER_KEYS[kind], f"a {kind} layer", UNSUPPORTED)
        types[name] = kind
    inputs: dict[str, list[str]] = {}
    for name, kind in types.items():
        values = _values(layers, name)
        _, lo, hi = LAYER_BUILDERS[kind]
        names = values.names("inputs") if hi != 0 else []
        for src in names:
            if src not in types:
                raise values.error(f"input '{clip(src)}' names no layer", "inputs")
        if len(names) < lo or (hi is not None and len(names) > hi):
            wanted = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise values.error(f"a {kind} layer takes {wanted} input(s), got {len(names)}", "inputs")
        inputs[name] = names
    order = _dependency_order(layers, inputs)
    _check_cost_and_use(layers, types, inputs)
    return LayerGraph(types, inputs, order)


def _dependency_order(layers: CfgFile, inputs: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm, ties broken by file position; a cycle is reported at one of its layers."""
    position = {name: i for i, name in enumerate(layers.sections)}
    waiting = {name: len(set(srcs)) for name, srcs in inputs.items()}
    consumers: dict[str, list[str]] = {name: [] for name in inputs}
    for name, srcs in inputs.items():
        for src in set(srcs):
            consumers[src].append(name)
    ready = [(position[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for consumer in consumers[name]:
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, (position[consumer], consumer))
    if len(order) < len(inputs):
        # Every layer left over has a left-over input: following them must come back to one.
        left = set(inputs) - set(order)
        path = [min(left, key=position.__getitem__)]
        while True:
            nxt = next(src for src in inputs[path[-1]] if src in left)
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                raise _values(layers, nxt).error(
                    f"inputs form a cycle: {' <- '.join(cycle)} (each layer takes input from the next)", "inputs")
            path.append(nxt)
    return order


def _check_cost_and_use(layers: CfgFile, types: dict[str, str], inputs: dict[str, list[str]]) -> None:
    costs = [name for name, kind in types.items() if kind == "cost.logreg"]
    if not costs:
        raise ConfigError("no cost.logreg layer: the network needs one (inputs=LABELS,SOFTMAX) to define its loss",
                          file=layers.name, line=layers.num_lines)
    if len(costs) > 1:
        first = layers.sections[costs[0]]
        raise _values(layers, costs[1]).error(
            f"only one cost layer is supported; '{first.name}' (line {first.line}) is already one")
    used = {src for srcs in inputs.values() for src in srcs}
    for name, kind in types.items():
        if kind != "cost.logreg" and name not in used:
            raise _values(layers, name).error(f"layer '{name}' is not used by any other layer")
        if kind == "cost.logreg" and name in used:
            raise _values(layers, next(n for n, s in inputs.items() if name in s)).error(
                f"input '{name}' is a cost layer; it has no output for other layers", "inputs")


def _check_params_file(params: CfgFile, layers: CfgFile, types: dict[str, str]) -> None:
    for name, section in params.sections.items():
        if name not in types:
            raise section.error(f"no layer named '{name}' in {layers.name}")
        SectionValues(section).check_keys(PARAM_KEYS[types[name]], f"the parameters of a {types[name]} layer",
                                          UNSUPPORTED)


def _check_crop(crop: Any) -> int:
    if isinstance(crop, bool) or not isinstance(crop, int) or not 1 <= crop <= 32:
        raise ModelError(f"crop must be a whole number from 1 to 32 (the image side), got {crop!r}")
    return crop


def _logits_layer(graph: LayerGraph) -> str | None:
    """The layer feeding the softmax of the cost layer, if the graph has that form (else the
    layer builders report what is wrong)."""
    cost = next(name for name, kind in graph.types.items() if kind == "cost.logreg")
    if len(graph.inputs[cost]) != 2 or graph.types[graph.inputs[cost][1]] != "softmax":
        return None
    softmax_inputs = graph.inputs[graph.inputs[cost][1]]
    return softmax_inputs[0] if len(softmax_inputs) == 1 else None


def _set_num_classes(layers: CfgFile, graph: LayerGraph, num_classes: int) -> None:
    """Make the logits fc layer give ``num_classes`` outputs (the shipped networks follow the data)."""
    check_num_classes(num_classes)
    logits = _logits_layer(graph)
    if logits is None:
        return
    section = layers.sections[logits]
    if graph.types[logits] != "fc":
        raise SectionValues(section).error(f"cannot set num_classes={num_classes}: the softmax input '{logits}' "
                                           f"is a {graph.types[logits]} layer, only an fc layer's outputs can "
                                           "be changed")
    old = section.get("outputs")
    line = old.line if old is not None else section.line
    section.items["outputs"] = CfgItem("outputs", str(num_classes), line)


def build_cfg_model(layers_text: str, params_text: str | None, layers_name: str = "layers.cfg",
                    params_name: str = "layer-params.cfg", crop: int = 24, flip: bool | None = None, *,
                    require_params: bool = True, num_classes: int | None = None,
                    memory_limit: int | None | str = "machine") -> CfgNet:
    """Build the network of a cuda-convnet layer file (``layers_text``) and parameter file.

    ``crop``: side of the square input images (the data layer's size); ``flip``: random horizontal
    flips in training (default: ``crop < 32``, i.e. with the random-crop augmentation).
    ``params_text=None`` is an error as soon as a layer needs learning parameters, unless
    ``require_params=False``: then the structure is built (for summaries) without them.
    ``num_classes``: replaces the ``outputs`` of the fc layer feeding the softmax (the shipped
    networks use it to follow the data's class count); None keeps the file's value.
    ``memory_limit``: bytes the network may need to train (``"machine"``: 80% of this machine's
    memory; None: no check); a layer that would exceed it is refused before anything is allocated.
    The names are used in error messages and kept in ``cfg_spec``.
    """
    crop = _check_crop(crop)
    flip = bool(crop < 32) if flip is None else bool(flip)
    structure_only = params_text is None and not require_params
    layers = parse_cfg(layers_text, layers_name)
    params = parse_cfg(params_text, params_name) if params_text is not None else None
    graph = resolve_graph(layers)
    if params is not None:
        _check_params_file(params, layers, graph.types)
    if num_classes is not None:
        _set_num_classes(layers, graph, num_classes)

    spec = {"layers_text": layers_text, "params_text": params_text, "layers_name": layers_name,
            "params_name": params_name, "crop": crop, "flip": flip, "structure_only": structure_only}
    if num_classes is not None:
        spec["num_classes"] = num_classes
    budget = MemoryBudget() if memory_limit == "machine" else MemoryBudget(memory_limit, "memory_limit")
    built: dict[str, BuiltLayer] = {}
    for name in graph.order:
        kind = graph.types[name]
        values = _values(layers, name)
        for src in graph.inputs[name]:
            if built[src].shape.labels and kind != "cost.logreg":
                raise values.error(f"input '{src}' is the label data layer; only cost.logreg takes it", "inputs")
        ctx = LayerContext(
            name=name, type=kind, values=values,
            params=_values(params, name) if params is not None and name in params.sections else None,
            sources=[Source(src, graph.types[src], built[src].shape) for src in graph.inputs[name]],
            crop=crop, structure_only=structure_only, params_file=params.name if params is not None else None,
            budget=budget)
        built[name] = LAYER_BUILDERS[kind][0](ctx)
        if kind not in ("conv", "local", "fc"):  # the weight layers counted themselves before allocating
            ctx.reserve(None, 0, built[name].shape.features)
    net = _assemble(CfgNet(spec, crop, flip), layers, graph, built, structure_only)
    net.memory_estimate = budget
    return net


def _assemble(net: CfgNet, layers: CfgFile, graph: LayerGraph, built: dict[str, BuiltLayer],
              structure_only: bool) -> CfgNet:
    cost = next(name for name, kind in graph.types.items() if kind == "cost.logreg")
    softmax = graph.inputs[cost][1]
    logits = graph.inputs[softmax][0]
    n_out = built[logits].shape.features
    outputs = layers.sections[logits].get("outputs") if graph.types[logits] == "fc" else None
    where = (LogitsSource(layers.name, outputs.line, logits, "outputs") if outputs is not None else
             LogitsSource(layers.name, layers.sections[softmax].get("inputs").line, softmax, "inputs"))
    if n_out < 2:
        raise ConfigError(f"softmax input '{logits}' gives {n_out} value(s); a classifier needs 2 or more",
                          file=where.file, line=where.line, section=where.section)
    net.num_classes = n_out
    net.logits_source = where
    needed, stack = set(), [logits]  # the layers the logits depend on
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(graph.inputs[name])
    plan, learning = [], []
    for name in graph.order:
        layer = built[name]
        net.layer_types[name] = layer.type
        if name not in needed or layer.module is None:
            continue
        problem = check_layer_name(net, name)
        if problem:
            raise _values(layers, name).error(problem)
        net.add_module(name, layer.module)
        plan.append(PlanStep(name, tuple(graph.inputs[name]), tuple(layer.views)))
        learning += [LearningGroup(f"{name}.{l.param}", l.lr, l.momentum, l.wc) for l in layer.learn]
    net.plan = tuple(plan)
    net.image_layers = tuple(n for n in needed if graph.types[n] == "data" and not built[n].shape.labels)
    net.logits_layer = logits
    net.learning = None if structure_only else learning
    net.loss_coeff = float(built[cost].loss_coeff if built[cost].loss_coeff is not None else 1.0)
    return net


def _read_text(path: str | Path) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a UTF-8 text file (byte {exc.start})", file=str(path)) from None


def load_cfg_model(layers_path: str | Path, params_path: str | Path | None = None, crop: int = 24,
                   flip: bool | None = None, *, require_params: bool = True,
                   num_classes: int | None = None) -> CfgNet:
    """Build the network of a layer-definition file and its layer-parameter file (see
    :func:`build_cfg_model`). Without ``params_path`` the layer file must need no learning
    parameters (no conv/local/fc layer, norms with scale/pow inline), unless ``require_params=False``."""
    layers_text = _read_text(layers_path)
    params_text = _read_text(params_path) if params_path is not None else None
    return build_cfg_model(layers_text, params_text, str(layers_path),
                           str(params_path) if params_path is not None else "layer-params.cfg", crop, flip,
                           require_params=require_params, num_classes=num_classes)


def build_cfg_model_from_spec(spec: dict[str, Any]) -> CfgNet:
    """Rebuild a model from its ``cfg_spec`` (as saved in a run folder)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("layers_text"), str):
        raise ModelError("malformed cfg model spec: expected a dict with the layer file's text")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ModelError(f"malformed cfg model spec: unknown keys {sorted(unknown)}")
    return build_cfg_model(spec["layers_text"], spec.get("params_text"), spec.get("layers_name", "layers.cfg"),
                           spec.get("params_name", "layer-params.cfg"), spec.get("crop", 24), spec.get("flip"),
                           require_params=not spec.get("structure_only", False),
                           num_classes=spec.get("num_classes"))
