"""How raw uint8 images become a model's input: crop, normalization, training augmentation.

A leaf module: models declare an ``InputSpec`` and the data pipeline (``data.augment``) applies it, so
both depend on this module and neither on the other.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
