"""What every localconv model is: an ``nn.Module`` that maps preprocessed images to logits.

A model also declares how its input must be prepared (:class:`InputSpec`), so that
training, evaluation and prediction share one preprocessing path
(:mod:`localconv.data.augment`), and how it wants to be trained under the
``original`` recipe (:meth:`Classifier.param_groups`, :meth:`Classifier.regularization_loss`).
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.augment import eval_batch
from ..data.input_spec import InputSpec
from ..errors import ModelError

SOURCE_SIZE = 32  # side of the raw uint8 images every model's preprocessing starts from
# A per-image standardized input has mean 0 and std <= 1 exactly; these bounds leave room for
# randn-like test inputs and refuse raw 0..255 pixels and most 0..1 pixels (see predict_proba).
STANDARDIZED_MAX_MEAN, STANDARDIZED_MAX_STD = 0.2, 1.2


class ModelValueError(ModelError, ValueError):
    """A bad model option or input: a ``ValueError`` for Python callers, exit 2 in the CLI."""


def check_num_classes(value: Any, what: str = "num_classes") -> int:
    """``value`` as a class count (a whole number >= 2, numpy integers too), or :class:`ModelValueError`."""
    try:
        count = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < 2:
        raise ModelValueError(f"{what} must be a whole number >= 2, got {value!r}")
    return count


def check_positive(value: Any, what: str) -> float:
    """``value`` as a finite number > 0 (init scales), or :class:`ModelValueError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ModelValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


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

    timm-style conveniences: :meth:`get_classifier`, :meth:`reset_classifier`,
    :attr:`pretrained_cfg`, and :meth:`preprocess` (raw uint8 NCHW images -> model input).
    """

    input_spec: InputSpec = InputSpec()
    num_classes: int = 10
    in_chans: int = 3
    classes: list[str] | None = None  # class names, when known (set by localconv.load_run)
    # True only where forward returns probabilities, a deliberate bug (tf-tutorial-2016, softmax_output=True):
    # predict_proba then takes their log as the logits (output_logits) instead of softmaxing them twice.
    outputs_probabilities: bool = False

    def __init__(self) -> None:
        super().__init__()
        # Temperature for calibrated probabilities (1 = uncalibrated); saved with the weights.
        self.register_buffer("temperature", torch.ones(()))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every model's reset_classifier also forgets what described the old head (class names, the
        # calibrated temperature): the models replace their heads in their own ways, the metadata is the
        # same for all of them, and a subclass cannot forget to clear it.
        own = cls.__dict__.get("reset_classifier")
        if own is not None and not getattr(own, "_forgets_head_metadata", False):
            def reset_classifier(self: Classifier, num_classes: int, _replace_head: Callable = own) -> None:
                _replace_head(self, num_classes)
                self.forget_head_metadata()

            reset_classifier.__doc__, reset_classifier.__name__ = own.__doc__, own.__name__
            reset_classifier.__qualname__ = own.__qualname__
            reset_classifier._forgets_head_metadata = True  # type: ignore[attr-defined]
            cls.reset_classifier = reset_classifier  # type: ignore[method-assign]

    # ------------------------------------------------------------------ input checks and preprocessing

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a model input of the wrong shape ([N, in_chans, crop, crop] floats).

        Shapes are known on the host, so this costs nothing inside compiled or captured steps.
        Without it a 24x24 cfg network silently takes 32x32 or 40x40 images and reads a corner.
        """
        crop, chans = self.input_spec.crop, self.in_chans
        if x.dim() != 4 or x.shape[1] != chans or x.shape[2] != crop or x.shape[3] != crop:
            raise ModelValueError(
                f"{self._name()} takes preprocessed images [N, {chans}, {crop}, {crop}], got "
                f"{list(x.shape)}; give raw uint8 images [N, {chans}, {SOURCE_SIZE}, {SOURCE_SIZE}] to "
                f"predict_proba/preprocess, which crop and normalize them")
        if x.dtype == torch.uint8:
            raise ModelValueError(f"{self._name()}: the network takes preprocessed float images; raw uint8 "
                                  "images go through model.preprocess(x) (predict_proba does it for you)")

    def _name(self) -> str:
        return f"model {getattr(self, 'model_name', None) or type(self).__name__!s}"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Raw uint8 images ``[N, C, 32, 32]`` (NCHW, 0..255; one ``[C, 32, 32]`` image is also
        accepted) -> the float input of the network: the centre crop, normalized as in evaluation.

        The same code prepares test images in ``localconv eval`` (``data.augment.eval_batch``).
        """
        if not isinstance(images, torch.Tensor):
            raise ModelValueError(f"preprocess takes a uint8 tensor [N, C, H, W], got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ModelValueError(f"preprocess takes raw uint8 images (0..255), got {images.dtype}")
        if images.dim() == 3:
            images = images[None]
        chans = self.in_chans
        if images.dim() == 4 and images.shape[-1] == chans and images.shape[1] != chans:
            raise ModelValueError(f"images of shape {list(images.shape)} look channels-last (NHWC); give NCHW "
                                  f"[N, {chans}, {SOURCE_SIZE}, {SOURCE_SIZE}]: images.permute(0, 3, 1, 2)")
        if images.dim() != 4 or tuple(images.shape[1:]) != (chans, SOURCE_SIZE, SOURCE_SIZE):
            raise ModelValueError(f"preprocess takes uint8 images [N, {chans}, {SOURCE_SIZE}, {SOURCE_SIZE}] "
                                  f"(NCHW), got {list(images.shape)}; resize other sizes to "
                                  f"{SOURCE_SIZE}x{SOURCE_SIZE} first: localconv.resize_images(images)")

        device = next((b.device for b in self.buffers()), images.device)
        mean = getattr(self, "pixel_mean", None) if self.needs_pixel_mean() else None
        return eval_batch(images.to(device), self.input_spec, mean)

    def _check_value_range(self, x: torch.Tensor) -> None:
        """Refuse float inputs that cannot be this model's preprocessed images.

        Per-image standardization gives every image mean 0 and standard deviation <= 1, so raw
        0..255 floats (or most 0..1 floats) are recognised and refused instead of giving wrong
        probabilities. Mean-subtracted inputs (cfg models) have no such invariant: not checked.
        """
        if self.input_spec.normalize != "standardize" or x.numel() == 0:
            return
        flat = x.detach().float().flatten(1)
        mean = float(flat.mean(1).abs().max())
        std = float(flat.std(1, unbiased=False).max())
        if mean > STANDARDIZED_MAX_MEAN or std > STANDARDIZED_MAX_STD:
            raise ModelValueError(
                f"{self._name()}: float input is not per-image standardized (image means up to {mean:.3g} away "
                f"from 0, standard deviations up to {std:.3g}; expected 0 and <= 1): give raw uint8 images, or "
                "model.preprocess(uint8 images)")

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (rows sum to 1).

        ``x``: raw uint8 images ``[N, C, 32, 32]`` (preprocessed here, see :meth:`preprocess`) or
        already preprocessed floats ``[N, C, crop, crop]`` (for standardizing models, floats that
        are not standardized, e.g. 0..255 pixels, are refused).
        """
        if x.dtype == torch.uint8:
            x = self.preprocess(x)
        else:
            self.check_input(x)
            self._check_value_range(x)
        return torch.softmax(self.output_logits(self(x)) / self.temperature, dim=-1)

    def output_logits(self, output: torch.Tensor) -> torch.Tensor:
        """The network's output as float logits: itself, or, for a model that outputs probabilities
        (:attr:`outputs_probabilities`), their log (``softmax(log p) == p``: no second softmax)."""
        output = output.float()
        if self.outputs_probabilities:
            return output.clamp_min(torch.finfo(output.dtype).tiny).log()
        return output

    # ------------------------------------------------------------------ classifier head (timm names)

    def get_classifier(self) -> nn.Module:
        """The layer that produces the logits."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the logits layer by a freshly initialised one with ``num_classes`` outputs.

        The old head's metadata goes with it (:meth:`forget_head_metadata`): ``classes`` becomes None
        and the temperature 1, until the new head is trained (training sets the data's classes)."""
        raise NotImplementedError

    def forget_head_metadata(self) -> None:
        """Drop what described the replaced head: its class names (also in :attr:`pretrained_cfg`) and the
        softmax temperature calibrated for its logits. Called by every :meth:`reset_classifier`."""
        self.classes = None
        self.temperature.fill_(1.0)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """What a caller needs to feed the model (timm's ``pretrained_cfg``, for localconv models)."""
        spec = self.input_spec
        norm = {"standardize": "per-image standardization", "pixel_mean": "per-pixel mean subtraction",
                "none": "none"}[spec.normalize]
        return {
            "architecture": getattr(self, "model_name", None) or "cfg",
            "input_size": (self.in_chans, spec.crop, spec.crop),
            "source_size": (self.in_chans, SOURCE_SIZE, SOURCE_SIZE),
            "input_dtype": "uint8 NCHW (0..255) for preprocess/predict_proba",
            "crop": spec.crop,
            "crop_pct": spec.crop / SOURCE_SIZE,
            "crop_mode": "center",
            "normalization": norm,
            # per-image standardization has no fixed mean/std; the pixel mean is model.pixel_mean
            "mean": None,
            "std": None,
            "train_augmentation": {"random_crop": spec.crop < SOURCE_SIZE, "flip": spec.flip,
                                   "brightness_contrast": spec.photometric},
            "num_classes": self.num_classes,
            "classes": list(self.classes) if self.classes is not None else None,
        }

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


def transforms(model: Classifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """The test-time preprocessing of ``model`` as a function (timm's ``create_transform``):
    raw uint8 images ``[N, C, 32, 32]`` -> the network's float input (see :meth:`Classifier.preprocess`)."""
    if not isinstance(model, Classifier):
        raise ModelValueError(f"transforms() takes a localconv model, got {type(model).__name__}")
    return model.preprocess
