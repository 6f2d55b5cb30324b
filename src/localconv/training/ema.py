"""Exponential moving average of the weights, as TF's ``ExponentialMovingAverage``.

With ``num_updates`` warm-up (the tutorial passes the global step): the decay used at
update ``t`` is ``min(decay, (1 + t) / (10 + t))``, so early averages track the weights
closely instead of remembering the random initialization for 10,000 steps.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """Shadow copy of a model whose parameters are averaged; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        shadow = [p for p in self.model.parameters()]
        live = [p.detach() for p in model.parameters()]
        # shadow = d * shadow + (1 - d) * live
        torch._foreach_lerp_(shadow, live, 1.0 - d)
        for sb, b in zip(self.model.buffers(), model.buffers()):
            sb.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = num_updates
