"""The locator of the first non-finite layer, for the engine's NaN/Inf message.

The hooks themselves live in :mod:`localconv.layer_hooks` (torch only: the doctor and
``localconv.Watch`` use them on any model).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layer_hooks import LayerHooks, locate_nonfinite


def first_nonfinite_layer(model: nn.Module, inputs: torch.Tensor | None = None) -> str | None:
    """Name of the first layer (forward order) whose weights or activations are NaN/Inf.

    With ``inputs`` the model is run once on them (in training mode, gradients on, nothing
    updated) to see which layer's output first turns non-finite; without, only weights and
    gradients are inspected. For the engine, after a non-finite loss.
    """
    hooks = LayerHooks(model)
    try:
        if inputs is not None:
            was_training = model.training
            model.train()
            with torch.enable_grad():
                model(inputs)
            model.train(was_training)
        name, _ = locate_nonfinite(model, hooks)
    finally:
        hooks.remove()
    return name
