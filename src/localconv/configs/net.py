"""``CfgNet``: the model a cuda-convnet layer file describes, as a :class:`Classifier`.

Each cfg layer with a computation is a submodule named after its section (``conv2.weight``);
``forward`` runs them in dependency order and returns the logits, i.e. the input of the
softmax layer that feeds ``cost.logreg``: cross-entropy on these logits equals cuda-convnet's
logreg cost on the softmax probabilities. ``cfg_spec`` holds what is needed to rebuild the
model (:func:`localconv.configs.build_cfg_model_from_spec`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..models.base import Classifier, GroupSpec, InputSpec, check_num_classes


@dataclass(frozen=True)
class PlanStep:
    """Run layer ``name`` on ``inputs``; ``views[i]`` reshapes a flat input to (C, H, W) first."""

    name: str
    inputs: tuple[str, ...]
    views: tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class LearningGroup:
    """epsW/momW/wc (or epsB/momB) of one parameter tensor, by its qualified name."""

    param: str  # e.g. "conv1.weight"
    lr: float
    momentum: float
    wc: float


@dataclass(frozen=True)
class LogitsSource:
    """Where the class count is written: the logits fc's ``outputs`` line (or the softmax's ``inputs``)."""

    file: str
    line: int
    section: str
    key: str


class CfgNet(Classifier):
    """A network built from cuda-convnet layer/parameter files (see :mod:`localconv.configs`)."""

    def __init__(self, cfg_spec: dict[str, Any], crop: int, flip: bool) -> None:
        super().__init__()
        self.input_spec = InputSpec(crop=crop, normalize="pixel_mean", flip=flip, photometric=False)
        # per-pixel training mean [3, 32, 32]; the engine fills it (set_pixel_mean) and it is saved
        self.register_buffer("pixel_mean", torch.zeros(3, 32, 32))
        self.cfg_spec = cfg_spec
        self.loss_coeff = 1.0  # the cost layer's coeff: the engine multiplies the loss by it
        self.default_schedule: str | None = None  # "EPOCHS:MULT,..." for the engine; set by cc-* models
        self.layer_types: dict[str, str] = {}  # section name -> cfg type, for reports
        self.learning: list[LearningGroup] | None = None  # None: built without a params file
        self.plan: tuple[PlanStep, ...] = ()
        self.image_layers: tuple[str, ...] = ()  # data layers with dataIdx=0
        self.logits_layer = ""
        self.logits_source: LogitsSource | None = None
        self.memory_estimate: Any = None  # the builder's MemoryBudget: per-layer params and activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        outputs = {name: x for name in self.image_layers}
        for step in self.plan:
            args = [outputs[name] if view is None else outputs[name].reshape(-1, *view)
                    for name, view in zip(step.inputs, step.views)]
            outputs[step.name] = self._modules[step.name](*args)
        return outputs[self.logits_layer].flatten(1)

    def param_groups(self) -> list[GroupSpec]:
        """One group per parameter tensor, named ``layer.weight`` / ``layer.bias``, with the
        params file's epsW/momW/wc (weights) or epsB/momB (biases, no decay)."""
        if self.learning is None:
            raise ModelError(f"{self.cfg_spec.get('layers_name')}: built without a layer-parameter file, so it has "
                             "no learning parameters; give one (--params)")
        return [GroupSpec(params=[self.get_parameter(g.param)], lr=g.lr, momentum=g.momentum, wc=g.wc, name=g.param)
                for g in self.learning]

    def get_classifier(self) -> nn.Module:
        return self._modules[self.logits_layer]

    def check_classes(self, classes: list[str]) -> None:
        """Refuse data whose class count differs from the file's, at the line that sets it."""
        if len(classes) == self.num_classes:
            return
        where = self.logits_source
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        raise ConfigError(f"the network gives {self.num_classes} class scores ({where.key} of '{where.section}') "
                          f"but the data has {len(classes)} classes ({shown}); set outputs={len(classes)} on the "
                          f"layer feeding the softmax", file=where.file, line=where.line, section=where.section)

    def reset_classifier(self, num_classes: int) -> None:
        """A new logits fc layer with ``num_classes`` outputs, built as the file says (initW/initB).

        The spec records the new count, so a run folder rebuilds the same network."""
        from .builder import build_cfg_model_from_spec

        num_classes = check_num_classes(num_classes)
        spec = dict(self.cfg_spec, num_classes=num_classes)
        fresh = build_cfg_model_from_spec(spec)
        old = self.get_classifier()
        weight = next(old.parameters())
        self._modules[self.logits_layer] = fresh.get_classifier().to(device=weight.device, dtype=weight.dtype)
        self.cfg_spec, self.num_classes = spec, num_classes
        if getattr(self, "model_name", None):  # a shipped network: its registry options carry the count
            self.model_kwargs = {k: v for k, v in self.model_kwargs.items() if k != "num_classes"}
            if num_classes != 10:
                self.model_kwargs["num_classes"] = num_classes

    def extra_repr(self) -> str:
        return f"cfg={self.cfg_spec.get('layers_name')!r}, crop={self.input_spec.crop}, logits={self.logits_layer!r}"


def check_layer_name(net: nn.Module, name: str) -> str | None:
    """Why ``name`` cannot be a submodule of ``net`` (clashes with an attribute), or None."""
    if name in net._modules:
        return None
    if hasattr(net, name):
        return f"layer name '{name}' clashes with a model attribute; rename the section"
    return None
