"""What every localconv model is: an ``nn.Module`` that maps preprocessed images to logits.

A model also declares how its input must be prepared (:class:`InputSpec`), so that
training, evaluation and prediction share one preprocessing path
(:mod:`localconv.data.augment`), and how it wants to be trained under the
``original`` recipe (:meth:`Classifier.param_groups`, :meth:`Classifier.regularization_loss`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """How raw uint8 32x32 images become this model's input.

    normalize:
      ``"standardize"``  per-image standardization (TF tutorial), applied after cropping;
      ``"pixel_mean"``   subtract the per-pixel training mean (cuda-convnet), applied
                         to the full 32x32 image before cropping (model buffer ``pixel_mean``);
      ``"none"``         raw 0..255 floats.
    """

    crop: int = 24  # side of the (random at train, central at test) crop; 32 = no cropping
    normalize: str = "standardize"
    flip: bool = True  # random horizontal flips during training
    # TF tutorial photometric augmentation (brightness/contrast); cuda-convnet uses none.
    photometric: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GroupSpec:
    """Learning hyperparameters of one optimizer parameter group (cuda-convnet naming).

    lr: learning rate (epsW / epsB); momentum: momW / momB; wc: L2 weight decay applied
    inside the update (cuda-convnet); loss-term decay (TF) lives in regularization_loss().
    """

    params: list[nn.Parameter]
    lr: float
    momentum: float = 0.0
    wc: float = 0.0
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Classifier(nn.Module):
    """Base class: ``forward(x) -> logits``; ``predict_proba(x) -> probabilities``.

    Exercise 1 of the TF tutorial done right: the network returns logits, the loss
    consumes logits (cross-entropy applies log-softmax itself) and probabilities are
    produced only here, for prediction.
    """

    input_spec: InputSpec = InputSpec()
    num_classes: int = 10

    def __init__(self) -> None:
        super().__init__()
        # Temperature for calibrated probabilities (1 = uncalibrated); saved with the weights.
        self.register_buffer("temperature", torch.ones(()))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (rows sum to 1) for preprocessed inputs ``x``."""
        return torch.softmax(self(x).float() / self.temperature, dim=-1)

    def regularization_loss(self) -> torch.Tensor | float:
        """Loss-term weight decay (TF style, ``wd * sum(w^2) / 2``); 0 for models without it."""
        return 0.0

    def param_groups(self) -> list[GroupSpec]:
        """Parameter groups for the model's own ('original') recipe."""
        return [GroupSpec(params=[p for p in self.parameters() if p.requires_grad], lr=0.1)]

    def needs_pixel_mean(self) -> bool:
        return self.input_spec.normalize == "pixel_mean"

    def set_pixel_mean(self, mean: torch.Tensor) -> None:
        """Store the per-pixel training mean [3, 32, 32] (float, 0..255 scale)."""
        if not hasattr(self, "pixel_mean"):
            self.register_buffer("pixel_mean", torch.zeros(3, 32, 32))
        self.pixel_mean.copy_(mean.to(self.pixel_mean))
