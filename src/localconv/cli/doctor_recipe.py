"""The built-in doctor (``localconv doctor --model/--cfg``): :func:`localconv.diagnose` on a built-in or
cuda-convnet model with its recipe's optimizer, schedule, loss and training batches.

It lives with the command, above both ``training`` (the recipe) and ``diagnostics`` (the watcher and the
checks), which never import each other: the doctor is the same for localconv's models as for anyone's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics.doctor import cpu_threads, doctor_images, doctor_split
from ..diagnostics.options import DoctorOptions
from ..diagnostics.report import DoctorReport
from ..errors import LocalconvError


class RecipeBatches:
    """The training batches of a run of the recipe, one epoch per pass (drawn with the run's seed), the
    learning rate set by its schedule before each step, as the training engine does."""

    def __init__(self, images: Any, labels: Any, spec: Any, recipe: Any, batch_size: int, seed: int,
                 pixel_mean: Any, optimizer: Any, schedule: Any) -> None:
        self.images, self.labels, self.spec, self.recipe = images, labels, spec, recipe
        self.batch_size, self.seed, self.pixel_mean = batch_size, seed, pixel_mean
        self.optimizer, self.schedule = optimizer, schedule
        self.dataset = labels  # what one pass goes over: diagnose() counts the images trained on by it
        self.steps_per_epoch = len(labels) // batch_size
        self.epoch = 0
        self.step = 0

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        from ..data.augment import draw_epoch_plan, train_batch
        from ..training.recipes import set_lr

        plan = draw_epoch_plan(len(self.labels), self.spec, self.seed, self.epoch,
                               max_shift=self.recipe.crop_jitter).to(self.images.device)
        self.epoch += 1
        for k in range(self.steps_per_epoch):
            b = plan.batch(k * self.batch_size, (k + 1) * self.batch_size)
            set_lr(self.optimizer, self.schedule.multiplier(self.step))
            self.step += 1
            yield train_batch(self.images[b.order], b, self.spec, self.pixel_mean), self.labels[b.order]


def run_doctor(model: Any, train_images: np.ndarray, train_labels: np.ndarray, options: DoctorOptions | None = None,
               classes: list[str] | None = None, subset_of: int | None = None) -> DoctorReport:
    """Train ``model`` for ``options.steps`` steps of its recipe under the doctor's watch and judge it.

    ``subset_of``: the arrays hold only the images ``doctor_images(subset_of, options)`` of a training set
    of ``subset_of`` images (a :class:`~localconv.data.TrainingSubset`); the run is the same as on all of them.
    """
    import torch
    import torch.nn.functional as F

    from ..data.augment import eval_batch
    from ..data.loader import pixel_mean, take
    from ..diagnostics.diagnose import diagnose
    from ..models.registry import model_spec
    from ..training.engine import resolve_device
    from ..training.recipes import build_optimizer, build_schedule, default_settings

    options = options or DoctorOptions()
    options.validate()
    train_idx, val_idx = doctor_split(len(train_labels) if subset_of is None else subset_of, options)
    if subset_of is not None:  # positions in the whole set -> rows of the arrays given
        held = doctor_images(subset_of, options)
        if len(held) != len(train_labels):
            raise LocalconvError(f"run_doctor: {len(train_labels)} images given, the doctor uses {len(held)} "
                                 f"of {subset_of}")
        train_idx, val_idx = np.searchsorted(held, train_idx), np.searchsorted(held, val_idx)
    device = resolve_device(options.device)
    model.to(device)
    tx, ty = (t.to(device) for t in take(train_images, train_labels, train_idx))
    if classes is not None:
        model.classes = list(classes)
    recipe = default_settings(options.recipe, model, device.type == "cuda")
    spec = model.input_spec if recipe.photometric is None else \
        dataclasses.replace(model.input_spec, photometric=model.input_spec.photometric and recipe.photometric)
    mean = None
    if model.needs_pixel_mean():
        model.set_pixel_mean(pixel_mean(tx))
        mean = model.pixel_mean
    optimizer = build_optimizer(recipe, model, options.lr, options.lr_scale, options.batch_size)
    steps_per_epoch = len(ty) // options.batch_size
    schedule = build_schedule(recipe, model, steps_per_epoch, options.steps / steps_per_epoch, None)
    batches = RecipeBatches(tx, ty, spec, recipe, options.batch_size, options.seed, mean, optimizer, schedule)
    coeff = float(getattr(model, "loss_coeff", 1.0))

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recipe's loss to minimize, and the plain cross-entropy that the doctor judges."""
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
        loss = coeff * ce
        if recipe.model_decay_in_loss:
            loss = loss + model.regularization_loss()
        plain = F.cross_entropy(logits.detach().float(), labels) if recipe.label_smoothing else ce.detach()
        return loss, plain

    loss_fn.expects_logits = True  # type: ignore[attr-defined]  (a softmax inside the model is the exercise-1 bug)
    held_out = None
    if len(val_idx):
        vx, vy = take(train_images, train_labels, val_idx)
        held_out = (eval_batch(vx.to(device), model.input_spec, mean), vy)
    spec_name = model_spec(model)
    name = spec_name.get("name") or Path(str(spec_name.get("cfg", {}).get("layers_name", "cfg model"))).name
    torch.manual_seed(options.seed)
    with cpu_threads(options.threads):
        report = diagnose(model, batches, loss_fn=loss_fn, optimizer=optimizer, steps=options.steps,
                          every=options.every, seed=options.seed, name=name, held_out=held_out,
                          batch_size=options.batch_size, dense_start=options.dense_start)
    report.batch_size = options.batch_size
    report.trained_with = f"{options.recipe} recipe"
    return report
