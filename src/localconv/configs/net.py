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

from ..errors import ModelError
from ..models.base import Classifier, GroupSpec, InputSpec


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    def extra_repr(self) -> str:
        return f"cfg={self.cfg_spec.get('layers_name')!r}, crop={self.input_spec.crop}, logits={self.logits_layer!r}"


def check_layer_name(net: nn.Module, name: str) -> str | None:
    """Why ``name`` cannot be a submodule of ``net`` (clashes with an attribute), or None."""
    if name in net._modules:
        return None
    if hasattr(net, name):
        return f"layer name '{name}' clashes with a model attribute; rename the section"
    return None
