"""Training recipes: which optimizer, schedule, batch size, EMA and loss a run uses.

``original``  each model family's own published procedure:
              TF tutorial models: plain SGD lr 0.1, x0.1 every 350 epochs (staircase), batch 128, EMA 0.9999
              with TF's num_updates warm-up, weight decay as a loss term, eval on the averaged weights;
              cuda-convnet (cfg) models: per-layer epsW/epsB/momW/momB/wc with cuda-convnet's update rule,
              batch 128, a phase schedule of epsW multipliers, no averaging; phase 1 trains without batch 5
              and is validated on it when the run asks for cuda-convnet's methodology (holdout.py).
              Both families train in float32 unless --amp is given (precision.py).
``fast``      modern practice on the same, unchanged layers: each model's own per-layer learning rates moved
              to momentum 0.9 and the larger batch with linear scaling, warm-up + linear decay to zero, label
              smoothing 0.1 and flip test-time averaging; bf16 where the device computes it natively
              (precision.py). GPU (batch 512, tuned for 30-40 epochs on an H200): the model's own decay, EMA
              0.999, random crops anywhere. CPU (batch 128, tuned for 8 epochs on 2 cores, BENCHMARKS.md "Fast
              recipe on the CPU"): Nesterov, one weight decay on every weight, no EMA, crops within 2
              pixels of the centre; tf-tutorial 3x the GPU's peak rate and decay 1e-3, cfg models 2x
              and 5e-4.
The settings are fields of :class:`RecipeSettings`; ``TrainOptions.recipe_overrides`` (``--recipe-set``) replaces
any of them, and run.json records them all (docs/speed.md, "Recipes and their settings").
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from ..errors import LocalconvError
from ..models.base import Classifier
from ..models.tf_tutorial import TFTutorialNet
from .optim import ConvNetSGD
from .run_schema import RECIPE_SETTINGS, SchemaError
from .schedule import EpochClock, PhaseSchedule, Schedule, StaircaseDecay, WarmupLinearDecay, parse_schedule

RECIPES = ("original", "fast")
FAST_MOMENTUM = 0.9
FAST_LR_BOOST = 3.0  # peak over the linearly scaled published rates; measured on an H200, see BENCHMARKS.md
TF_EPOCHS = 256  # the tutorial's 100K steps of 128 images are ~256 epochs
TF_DECAY_EPOCHS = 350
DEFAULT_CONVNET_SCHEDULE = "350:1,150:1,10:0.1,10:0.01"  # the 11% net's: batches 1-4, +batch 5, /10, /100


@dataclass
class RecipeSettings:
    name: str
    batch_size: int
    epochs: float
    ema_decay: float | None = None
    ema_warmup: bool = True
    label_smoothing: float = 0.0
    use_regularization_loss: bool = True
    tta: str = "none"  # eval-time views during training: none | flip
    nesterov: bool = False  # Nesterov's momentum step (fast recipe)
    weight_decay: float | None = None  # None: each layer's published decay; a number: this L2 decay on every
                                       # weight tensor (none on biases) in the update, instead of the model's
    photometric: bool | None = None  # None: the model's input spec; False: no brightness/contrast jitter
    crop_jitter: int | None = None  # None: random crops anywhere; J: within J pixels of the centre crop
    lr_boost: float = FAST_LR_BOOST  # fast recipe: peak rate over the linearly scaled published rates
    warmup_epochs: float | None = None  # fast recipe: linear warm-up length; None: one epoch, at most a fifth
                                        # of the run
    notes: list[str] = field(default_factory=list)

    @property
    def model_decay_in_loss(self) -> bool:
        """Whether the model's own loss-term decay (TF's ``wd * sum(W^2) / 2``) is part of the loss."""
        return self.use_regularization_loss and self.weight_decay is None


def with_overrides(settings: RecipeSettings, overrides: dict[str, Any] | None) -> RecipeSettings:
    """``settings`` with some fields replaced (``TrainOptions.recipe_overrides``: ablations, and the exact
    settings of a run being resumed); an unknown name or a bad value is refused naming it."""
    check_overrides(overrides)
    return replace(settings, **overrides) if overrides else settings


def check_overrides(overrides: dict[str, Any] | None) -> None:
    """Refuse an unknown setting name or a value it does not accept (run_schema.RECIPE_SETTINGS), naming it."""
    if overrides is not None and not isinstance(overrides, dict):
        raise LocalconvError(f"recipe_overrides: expected a dict of settings, got {overrides!r}")
    for key, value in (overrides or {}).items():
        if key not in RECIPE_SETTINGS.fields:
            known = ", ".join(sorted(RECIPE_SETTINGS.fields))
            raise LocalconvError(f"recipe setting {key!r} is unknown; known: {known}")
        try:
            RECIPE_SETTINGS.fields[key].check(value, key)
        except SchemaError as exc:
            raise LocalconvError(f"recipe setting {exc}") from None


def recorded_settings(recorded: dict[str, Any]) -> dict[str, Any]:
    """Every overridable setting of a run.json ``recipe`` record: a resumed run continues with exactly these.
    A setting an older run did not record takes its field default, which is the behaviour of that time
    (new settings are added with a default that changes nothing; recipes set their new values explicitly)."""
    settings = {f.name: recorded.get(f.name, f.default) for f in fields(RecipeSettings)
                if f.name in RECIPE_SETTINGS.fields}
    return {key: value for key, value in settings.items() if value is not MISSING}


def model_family(model: Classifier) -> str:
    return "tf" if isinstance(model, TFTutorialNet) else "convnet"


def default_settings(recipe: str, model: Classifier, on_gpu: bool) -> RecipeSettings:
    if recipe not in RECIPES:
        raise LocalconvError(f"--recipe: unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    family = model_family(model)
    if recipe == "original":
        if family == "tf":
            return RecipeSettings("original", 128, TF_EPOCHS, ema_decay=0.9999, ema_warmup=True)
        phases = parse_schedule(convnet_schedule_text(model, None))
        return RecipeSettings("original", 128, sum(p.epochs for p in phases), ema_decay=None)
    epochs = 30 if family == "tf" else 40
    if on_gpu:
        return RecipeSettings("fast", 512, epochs, ema_decay=0.999, ema_warmup=True, label_smoothing=0.1,
                              use_regularization_loss=True, tta="flip")
    # CPU: chosen by the 8-epoch experiments of BENCHMARKS.md, "Fast recipe on the CPU" (each changed setting
    # measured alone and together; tf-tutorial 75.5% -> 79.1%, cc-11pct 72.3% -> 76.3%, flip). The TF model
    # takes a higher peak rate and decay (measured on it; cc-11pct's were not re-measured with them).
    boost, decay = (3 * FAST_LR_BOOST, 1e-3) if family == "tf" else (2 * FAST_LR_BOOST, 5e-4)
    return RecipeSettings("fast", 128, epochs, ema_decay=None, label_smoothing=0.1, use_regularization_loss=True,
                          tta="flip", nesterov=True, weight_decay=decay, crop_jitter=2, lr_boost=boost)


def build_optimizer(recipe: RecipeSettings, model: Classifier, lr: float | None, lr_scale: float,
                    batch_size: int) -> ConvNetSGD:
    """The optimizer with each group's *base* learning rate stored as ``base_lr``."""
    if recipe.name == "original":
        groups = []
        for g in model.param_groups():
            base = g.lr
            if lr is not None:
                if model_family(model) != "tf":
                    raise LocalconvError("--lr: cfg models take their learning rates (epsW/epsB) from the params "
                                         "file; use --lr-scale to multiply them all")
                base = lr
            # cuda-convnet's schedules divide epsW; epsB stays (REFERENCE §3). TF decays every rate.
            scheduled = model_family(model) == "tf" or not _is_bias(g.name)
            groups.append({"params": g.params, "lr": base * lr_scale, "base_lr": base * lr_scale,
                           "momentum": g.momentum, "wc": g.wc, "name": g.name, "scheduled": scheduled})
        return ConvNetSGD(groups)
    # fast: the model's own per-layer learning parameters, moved to momentum 0.9 and the larger batch.
    # A group's step size per image is lr / (1 - momentum) / batch; keep that ratio, scaled linearly with
    # the batch relative to the published 128, so every layer keeps its published relative rate.
    groups = []
    names = {id(p): name for name, p in model.named_parameters()}
    for g in model.param_groups():
        base = lr if (lr is not None and model_family(model) == "tf") else g.lr
        if lr is not None and model_family(model) != "tf":
            raise LocalconvError("--lr: cfg models take their learning rates (epsW/epsB) from the params "
                                 "file; use --lr-scale to multiply them all")
        fast_lr = base * (batch_size / 128) * (1 - FAST_MOMENTUM) / max(1e-3, 1 - g.momentum)
        fast_lr *= recipe.lr_boost * lr_scale
        common = {"lr": fast_lr, "base_lr": fast_lr, "momentum": FAST_MOMENTUM, "nesterov": recipe.nesterov,
                  "scheduled": True}
        if recipe.weight_decay is None:  # the model's own per-layer decay (wc here, TF's loss term elsewhere)
            groups.append({"params": g.params, "wc": g.wc, "name": g.name, **common})
            continue
        # one decay for every weight tensor and none for biases, in place of the model's own
        weights = [p for p in g.params if not _is_bias(names[id(p)])]
        biases = [p for p in g.params if _is_bias(names[id(p)])]
        for part, params, wc in (("weights", weights, recipe.weight_decay), ("biases", biases, 0.0)):
            if params:
                name = g.name if not (weights and biases) else f"{g.name} ({part})"
                groups.append({"params": params, "wc": wc, "name": name, **common})
    return ConvNetSGD(groups)


def build_schedule(recipe: RecipeSettings, model: Classifier, steps_per_epoch: int, epochs: float,
                   schedule_text: str | None, clock: EpochClock | None = None) -> Schedule:
    """``clock``: the run's step <-> epoch map when phase 1 trains on fewer images (cuda-convnet's held-out
    batch 5, original recipe of cfg models); by default every epoch has ``steps_per_epoch`` steps."""
    total_steps = max(1, round(epochs * steps_per_epoch))
    if recipe.name == "original":
        if model_family(model) == "tf":
            if schedule_text:
                return PhaseSchedule(parse_schedule(schedule_text), steps_per_epoch)
            return StaircaseDecay(TF_DECAY_EPOCHS * steps_per_epoch, 0.1)
        return PhaseSchedule(parse_schedule(convnet_schedule_text(model, schedule_text)), steps_per_epoch,
                             total_epochs=epochs, clock=clock)
    if schedule_text:
        return PhaseSchedule(parse_schedule(schedule_text), steps_per_epoch, total_epochs=epochs)
    if recipe.warmup_epochs is None:
        warmup_steps = min(steps_per_epoch, total_steps // 5)
    else:
        warmup_steps = min(total_steps, round(recipe.warmup_epochs * steps_per_epoch))
    return WarmupLinearDecay(total_steps, warmup_steps=warmup_steps, final=0.0)


def convnet_schedule_text(model: Classifier, schedule_text: str | None) -> str:
    """The phases of a cfg model's original recipe: ``--schedule``, else the model's, else the 11% net's."""
    return schedule_text or getattr(model, "default_schedule", None) or DEFAULT_CONVNET_SCHEDULE


def first_phase_epochs(model: Classifier, schedule_text: str | None, epochs: float) -> float:
    """Whole epochs of phase 1 (the one that holds batch 5 out), its published length scaled as the schedule
    is to ``epochs`` and rounded to whole epochs (at least 1; all of a shorter run)."""
    phases = parse_schedule(convnet_schedule_text(model, schedule_text))
    scaled = phases[0].epochs * epochs / sum(p.epochs for p in phases)
    return min(float(epochs), float(max(1, round(scaled))))


def _is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.startswith("bias_")


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * (multiplier if g.get("scheduled", True) else 1.0)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
