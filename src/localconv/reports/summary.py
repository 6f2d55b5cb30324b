"""Per-layer summary of any :class:`Classifier`: output shapes, parameters, multiply-adds.

Shapes and multiply-adds come from forward hooks on one dummy image of the model's input size,
so the same code serves registered models (TF tutorial, cc-*) and cfg-built networks.
A row is one call of a direct child module of the model (a layer); a child called several times
(e.g. a shared ReLU) gives several rows, its parameters counted on the first.

Multiply-adds (per image, forward) count the weight layers -- ``Conv2d`` / conv:
``out_h*out_w*weight.numel()``; ``Linear`` / fc and locally connected layers: ``weight.numel()``
(every weight is used once per image) -- and the normalization windows (one multiply-add per
squared term summed). Pooling, activations and element-wise layers count 0. Modules may define
``multiply_adds() -> int`` themselves (the cuda-convnet ops do).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.base import Classifier
from ..nn.local import LocallyConnected2d
from ..nn.norm import ContrastNorm, CrossMapNorm, ResponseNorm

BYTES_FP32 = 4


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]  # per image, without the batch dimension
    params: int
    multiply_adds: int


@dataclass
class Totals:
    params: int
    multiply_adds: int
    bytes_fp32: int  # the weights
    bytes_fp32_with_ema: int  # weights + an exponential-moving-average copy (what a run saves)


@dataclass
class ModelSummary:
    model: str
    input_shape: list[int]
    layers: list[LayerRow] = field(default_factory=list)
    totals: Totals | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_image(output: torch.Tensor) -> int:
    return output[0].numel()


def module_multiply_adds(module: nn.Module, output: torch.Tensor) -> int | None:
    """Forward multiply-adds of one image through ``module``; None if it is not a counted kind."""
    own = getattr(module, "multiply_adds", None)
    if callable(own):
        return int(own())
    if isinstance(module, nn.Conv2d):
        return output.shape[-2] * output.shape[-1] * module.weight.numel()
    if isinstance(module, (nn.Linear, LocallyConnected2d)):
        return module.weight.numel()
    if isinstance(module, (nn.LocalResponseNorm, CrossMapNorm)):
        return _per_image(output) * module.size
    if isinstance(module, ResponseNorm):
        return _per_image(output) * module.size ** 2
    if isinstance(module, ContrastNorm):
        return 2 * _per_image(output) * module.size ** 2  # the local mean and the sum of squares
    return None


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def summarize(model: Classifier, name: str | None = None) -> ModelSummary:
    """Run one dummy image (``input_spec.crop`` square) through ``model`` and tabulate its layers."""
    crop = model.input_spec.crop
    chans = getattr(model, "in_chans", 3)  # a --in-chans 1 model takes one channel
    summary = ModelSummary(name or getattr(model, "model_name", None) or type(model).__name__, [chans, crop, crop])
    layer_types: dict[str, str] = getattr(model, "layer_types", {})
    counted = [0]  # multiply-adds so far, shared by all hooks
    seen: set[int] = set()
    handles = []

    def count_hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        out = _first_tensor(output)
        macs = module_multiply_adds(module, out) if out is not None else None
        counted[0] += macs or 0

    def layer_hooks(layer_name: str, module: nn.Module) -> tuple[Callable[..., None], Callable[..., None]]:
        start = [0]

        def pre(_module: nn.Module, _inputs: Any) -> None:
            start[0] = counted[0]

        def post(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = _first_tensor(output)
            params = 0 if id(module) in seen else sum(p.numel() for p in module.parameters())
            seen.add(id(module))
            summary.layers.append(LayerRow(layer_name, layer_types.get(layer_name, type(module).__name__),
                                           list(out.shape[1:]) if out is not None else [], params,
                                           counted[0] - start[0]))

        return pre, post

    for module in model.modules():
        if module is not model and _is_counted_kind(module):
            handles.append(module.register_forward_hook(count_hook))
    for layer_name, module in model.named_children():
        pre, post = layer_hooks(layer_name, module)
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, chans, crop, crop, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    n_params = sum(p.numel() for p in model.parameters())
    summary.totals = Totals(n_params, counted[0], n_params * BYTES_FP32, 2 * n_params * BYTES_FP32)
    return summary


def _is_counted_kind(module: nn.Module) -> bool:
    return callable(getattr(module, "multiply_adds", None)) or isinstance(
        module, (nn.Conv2d, nn.Linear, LocallyConnected2d, nn.LocalResponseNorm, CrossMapNorm, ResponseNorm,
                 ContrastNorm))


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def format_summary(summary: ModelSummary) -> str:
    """The summary as a text table with a totals footer."""
    header = ("layer", "type", "output", "params", "mult-adds")
    rows = [(r.name, r.type, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.multiply_adds:,}")
            for r in summary.layers]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        left = [str(row[i]).ljust(widths[i]) for i in range(3)]
        right = [str(row[i]).rjust(widths[i]) for i in range(3, 5)]
        return "  ".join(left + right).rstrip()

    out = [f"{summary.model}: input {'x'.join(map(str, summary.input_shape))}", line(header),
           "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    t = summary.totals
    if t is not None:
        out.append(f"total: {t.params:,} parameters, {t.multiply_adds:,} multiply-adds per image "
                   f"({t.multiply_adds / 1e6:.2f}M)")
        out.append(f"fp32 weights: {_megabytes(t.bytes_fp32)}; with an EMA copy: {_megabytes(t.bytes_fp32_with_ema)}")
    return "\n".join(out)
