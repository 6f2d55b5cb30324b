"""The training loop: device-resident data, one recipe, atomic checkpoints, exact resume.

A reader should be able to hold this file in their head: :class:`Trainer` prepares
data, optimizer, schedule and EMA from a model and :class:`TrainOptions`, then
:meth:`Trainer.fit` runs epochs of steps, each either :meth:`Trainer.train_step` (eager)
or the device-side :class:`~localconv.training.fused_step.FusedStep` (``--step fused`` /
``graph``, see docs/speed.md). Callbacks (diagnostics, TensorBoard) get the model after
``backward`` (eager only) and after each optimizer step. Randomness comes from
``(seed, epoch)`` alone (see :mod:`localconv.data.augment`), so a run resumed from any
checkpoint, also one written mid-epoch on Ctrl-C, ends with the same weights as an
uninterrupted run on the CPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from ..data.augment import EpochPlan, draw_epoch_plan, train_batch
from ..data.loader import Splits, pixel_mean
from ..errors import CheckpointError, LocalconvError
from ..metrics import LOSS_CROSS_ENTROPY, LOSS_KEYS, LOSS_TOTAL, auto_interval, format_accuracy
from ..models.base import Classifier
from ..models.registry import model_spec
from . import distributed as ddp
from .callbacks import Callback
from .checkpoint import (check_optimizer_state, load_optimizer_state, load_state, load_weights_into, log_size,
                         read_meta, rewind_log, save_checkpoint, trim_log, update_meta)
from .ema import WeightEMA
from .evaluate import evaluate
from .fused_step import STEP_MODES, FusedStep
from .holdout import HOLDOUT_MODES, Holdout, choose_holdout
from .layer_hooks import first_nonfinite_layer
from .loss_meter import LossMeter
from .plain_progress import PlainProgress, stderr_is_terminal
from .precision import resolve_amp
from .recipes import (RecipeSettings, build_optimizer, check_overrides, build_schedule, count_params, default_settings,
                      first_phase_epochs, model_family, recorded_settings, set_lr, with_overrides)
from .schedule import EpochClock


@dataclass
class TrainOptions:
    """Everything that defines a run besides the model and the data (stored in run.json)."""

    recipe: str = "original"
    epochs: float | None = None        # None: the recipe's default
    batch_size: int | None = None      # None: the recipe's default
    lr: float | None = None            # base learning rate (TF models / fast recipe)
    lr_scale: float = 1.0              # multiplies every group's learning rate
    schedule: str | None = None        # "EPOCHS:MULT,..." phases
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None            # bf16 autocast; None: the fast recipe's where bf16 is native (precision.py)
    compile: bool = False
    step: str = "auto"                 # auto | eager | fused | graph (see training/fused_step.py)
    eval_every: int = 1                # epochs between evaluations (0: only at the end)
    checkpoint_every: int = 1          # epochs between checkpoints
    skip_nonfinite: bool = False       # skip batches with a non-finite loss instead of stopping
    early_stop: int | None = None      # stop after this many evaluations without a better accuracy (None: never)
    holdout: str = "none"              # auto: cuda-convnet's methodology for cfg models under the original recipe
                                       # (phase 1 holds batch 5 out as its validation set; `localconv train`'s
                                       # default); none: every phase trains on every training image
    progress: bool = True
    log_every: int | None = None       # steps between step-level metrics.jsonl lines (0: none; None: 50,
                                       # fewer for short runs, see metrics.auto_interval)
    recipe_overrides: dict[str, Any] | None = None  # replace some of the recipe's settings (recipes.with_overrides):
                                       # ablations, e.g. {"batch_size": 128, "ema_decay": None}

    def validate(self) -> None:
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise LocalconvError(f"--epochs must be > 0, got {self.epochs}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise LocalconvError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise LocalconvError(f"--lr must be > 0, got {self.lr}")
        if not (self.lr_scale > 0 and math.isfinite(self.lr_scale)):
            raise LocalconvError(f"--lr-scale must be > 0, got {self.lr_scale}")
        if self.eval_every < 0 or self.checkpoint_every < 1:
            raise LocalconvError("--eval-every must be >= 0 and --checkpoint-every >= 1")
        if self.early_stop is not None and (self.early_stop < 1 or not self.eval_every):
            raise LocalconvError("--early-stop must be >= 1 and needs evaluations during training (--eval-every "
                                 f">= 1), got --early-stop {self.early_stop} --eval-every {self.eval_every}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise LocalconvError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.step not in STEP_MODES:
            raise LocalconvError(f"--step must be one of {', '.join(STEP_MODES)}, got {self.step!r}")
        check_overrides(self.recipe_overrides)
        if self.holdout not in HOLDOUT_MODES:
            raise LocalconvError(f"--holdout must be one of {', '.join(HOLDOUT_MODES)}, got {self.holdout!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if name not in ("cpu", "cuda") and not (kind == "cuda" and index.isdigit()):
        raise LocalconvError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise LocalconvError("--device cuda: no CUDA GPU is available (use --device cpu)")
    if index and int(index) >= torch.cuda.device_count():
        raise LocalconvError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA, or a CPU with AMX or AVX512-BF16 (oneDNN's fast bf16
    paths; without them bf16 is emulated, slower than float32)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


FUSED_POLL_EVERY = 25  # steps between the fused step's host checks (non-finite loss, progress bar)


class NonFiniteLoss(LocalconvError):
    exit_code = 3


@dataclass
class TrainState:
    step: int = 0                 # optimizer steps done
    train_time_s: float = 0.0     # time in training steps + evaluation, excluding checkpoint I/O
    images_seen: int = 0
    best_accuracy: float | None = None
    last_accuracy: float | None = None
    skipped_steps: int = 0
    best_step: int | None = None  # step of the best evaluation (its weights: best-<step>.safetensors)
    evals_since_best: int = 0     # evaluations without a better accuracy since then (--early-stop)
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, model: Classifier, splits: Splits, run_dir: str | Path, options: TrainOptions,
                 data_info: dict[str, Any] | None = None, classes: list[str] | None = None,
                 callbacks: Iterable[Callback] = (), resume: bool = False,
                 dist_ctx: ddp.DistContext | None = None) -> None:
        options.validate()
        self.options = options
        self.dist = dist_ctx
        self.is_main = dist_ctx is None or dist_ctx.is_main
        self.device = ddp.device_for(dist_ctx, resolve_device(options.device))
        self.run_dir = Path(run_dir)
        # channels_last on every device: cuDNN's and oneDNN's fast convolution and pooling layout (on the CPU it
        # took train_speed.py from 1.52x to 1.93x the baseline for cc-11pct, BENCHMARKS.md); before the EMA copy
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.full_train_size = int(splits.train_labels.numel())
        if dist_ctx is not None:  # each rank keeps only its shard of every split
            splits = Splits(*(ddp.shard(t, dist_ctx) for t in (splits.train_images, splits.train_labels)),
                            *(None if t is None else t[dist_ctx.rank::dist_ctx.world_size]
                              for t in (splits.val_images, splits.val_labels, splits.test_images,
                                        splits.test_labels)))
        self.splits = splits.to(self.device)
        self.data_info = data_info or {}
        self.classes = classes or [str(i) for i in range(model.num_classes)]
        self.callbacks = list(callbacks)
        self.amp = resolve_amp(options.amp, options.recipe, self.device.type, native_bf16(self.device))
        self.recipe: RecipeSettings = with_overrides(default_settings(options.recipe, model, self.device.type == "cuda"),
                                                     options.recipe_overrides)
        recorded = read_meta(self.run_dir) if resume else None  # run.json, read once (also by _restore)
        if recorded is not None:  # exactly the run's own settings and arithmetic, also when the defaults differ
            if not isinstance(recorded.get("recipe"), dict):  # its settings would fall to the defaults of today
                raise CheckpointError(f"{self.run_dir / 'run.json'}: no 'recipe' record (the settings the run was "
                                      "trained with: EMA, batch size, ...); it cannot be resumed exactly; was the "
                                      "file edited?")
            self.recipe = with_overrides(self.recipe, recorded_settings(recorded.get("recipe") or {}))
            if options.amp is None and isinstance(recorded.get("amp"), bool):
                self.amp = recorded["amp"]
        self.batch_size = options.batch_size or self.recipe.batch_size  # global batch
        self.local_batch = ddp.local_batch_size(self.batch_size, dist_ctx)
        self.epochs = options.epochs or self.recipe.epochs
        n = self.splits.train_images.shape[0]
        if n < self.local_batch:
            raise LocalconvError(f"--batch-size {self.batch_size} is larger than the {self.full_train_size} "
                                 "training images")
        self.steps_per_epoch = n // self.local_batch  # the last partial batch is dropped
        self.holdout, self.methodology = self._methodology(model, data_info or {})
        self.clock = EpochClock(self.steps_per_epoch)
        if self.holdout is not None:
            self.clock = EpochClock(self.steps_per_epoch, self.holdout.kept.numel() // self.local_batch,
                                    self.methodology["phase1_epochs"])
            self.holdout_kept = self.holdout.kept  # stays on the CPU: plans are drawn there
            self.holdout_set = (self.splits.train_images[self.holdout.held.to(self.device)],
                                self.splits.train_labels[self.holdout.held.to(self.device)])
        self.total_steps = max(1, self.clock.step_at(self.epochs))
        # step-level records: every 50 steps, more often in a short run so that its curves have points
        self.log_every = (options.log_every if options.log_every is not None
                          else auto_interval(self.total_steps, cap=50))
        if model.needs_pixel_mean():
            local_mean = pixel_mean(self.splits.train_images)
            if dist_ctx is not None:  # mean of the whole training set = mean of equal-size shard means
                local_mean = torch.tensor(ddp.all_sum(local_mean.flatten().tolist(), dist_ctx, self.device)
                                          ).reshape(local_mean.shape) / dist_ctx.world_size
            model.set_pixel_mean(local_mean)
        self.optimizer = build_optimizer(self.recipe, model, options.lr, options.lr_scale, self.batch_size)
        self.schedule = build_schedule(self.recipe, model, self.steps_per_epoch, self.epochs, options.schedule,
                                       clock=self.clock)
        self.ema = WeightEMA(model, self.recipe.ema_decay, self.recipe.ema_warmup) if self.recipe.ema_decay else None
        # the training batches' preparation: the model's, less the photometric jitter if the recipe drops it
        self.train_spec = model.input_spec if self.recipe.photometric is None else \
            dataclasses.replace(model.input_spec, photometric=model.input_spec.photometric and self.recipe.photometric)
        self.loss_coeff = float(getattr(model, "loss_coeff", 1.0))
        self.state = TrainState()
        self.last_terms: torch.Tensor | None = None  # [loss/total, loss/cross_entropy] of the last step
        self.should_stop = False
        self.init_from: dict[str, Any] | None = None  # the weights the run started from (train --init-from)
        self.best_state: dict[str, torch.Tensor] | None = None  # best evaluated weights not yet in a checkpoint
        self.train_hits: torch.Tensor | int = 0  # correct training predictions this epoch (eager steps), on device
        self.train_seen = 0
        self.stop_reason = ""
        self._interrupted = False
        self.partial_epoch: dict[str, Any] | None = None  # loss sums of an epoch cut by a stop (LossMeter.state)
        self._log_at_checkpoint: int | None = None  # metrics.jsonl's size when the last checkpoint was committed
        self._saved: tuple[int, str] | None = None  # step and stop reason of the last checkpoint on disk
        self._finished = False  # the training loop has ended: a signal now has nothing left to stop
        self.forward = self.model
        if dist_ctx is not None:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if options.compile:
            self.forward = torch.compile(self.forward)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
        self.step_mode = self._resolve_step_mode()
        self.fused: FusedStep | None = None  # see _fused_runner
        if recorded is not None:
            self._restore(recorded)

    def _resolve_step_mode(self) -> str:
        """eager (the default on CPU and whenever a run needs it) or the device-side fused / graph step."""
        requested = self.options.step
        blockers = []
        if self.dist is not None:
            blockers.append("distributed training")
        if self.options.skip_nonfinite:
            blockers.append("--skip-nonfinite")
        hooked = [type(cb).__name__ for cb in self.callbacks if type(cb).after_backward is not Callback.after_backward]
        if hooked:
            blockers.append("callbacks that inspect gradients (" + ", ".join(hooked) + ")")
        if requested == "auto":
            # eager on every device until benchmarks/gpu_suite.sh has checked the fused and graph steps'
            # parity on a GPU (issue 14); they stay opt-in
            return "eager"
        if requested != "eager" and blockers:
            raise LocalconvError(f"--step {requested} cannot be used with " + " or ".join(blockers)
                                 + "; use --step eager")
        if requested == "graph" and self.device.type != "cuda":
            raise LocalconvError("--step graph captures a CUDA graph and needs a CUDA device; "
                                 "use --step fused or eager on the CPU")
        return requested

    def _methodology(self, model: Classifier, data_info: dict[str, Any]) -> tuple[Holdout | None, dict[str, Any]]:
        """cuda-convnet's methodology (REFERENCE §3), stated in run.json: phase 1 trains without batch 5 (or its
        seeded stand-in, :mod:`.holdout`) and is validated on it; later phases train on every image."""
        if self.options.holdout != "auto" or self.options.recipe != "original" or model_family(model) != "convnet":
            return None, {"holdout": "none"}
        holdout = choose_holdout(self.splits.train_labels, model.num_classes, data_info)
        if holdout.held.numel() == 0 or holdout.kept.numel() < self.local_batch:
            # a fifth of each class is nothing, or leaves less than one batch: train on everything, and say so
            return None, {"holdout": "none", "reason": f"{holdout.kept.numel() + holdout.held.numel()} training "
                          "images are too few to hold out a fifth of each class and keep a batch"}
        record = {**holdout.record(), "phase1_epochs": first_phase_epochs(model, self.options.schedule,
                                                                          self.epochs)}
        if self.dist is not None:
            record["per_rank"] = True  # each rank holds out a fifth of each class of its own shard
        return holdout, record

    def methodology_text(self) -> str:
        """One line for the console: what phase 1 trains on and what it is validated on."""
        m = self.methodology
        if self.holdout is None:
            return f"every phase trains on all training images ({m['reason']})" if "reason" in m else ""
        later = ("" if m["phase1_epochs"] >= self.epochs else
                 f", then all {m['phase1_train_images'] + m['holdout_images']:,} images from epoch "
                 f"{m['phase1_epochs']:g}")
        plural = "" if m["phase1_epochs"] == 1 else "s"
        return (f"cuda-convnet methodology: phase 1 ({m['phase1_epochs']:g} epoch{plural}) trains on "
                f"{m['phase1_train_images']:,} images with {m['holdout_images']:,} held out ({m['holdout']}) as its "
                f"validation set{later}; --holdout none trains every phase on all images")

    def draw_plan(self, n: int, seed: int, epoch: int) -> EpochPlan:
        """One epoch's order and augmentation of ``n`` images, as this run's recipe prepares training batches."""
        return draw_epoch_plan(n, self.train_spec, seed, epoch, max_shift=self.recipe.crop_jitter)

    def epoch_plan(self, step: int, seed: int) -> tuple[EpochPlan, int, int, bool]:
        """The plan of the epoch holding the step after ``step`` steps (drawn on the CPU, in training-set
        positions), the step within that epoch, its number of steps, and whether it is a held-out phase-1 epoch."""
        epoch, first, epoch_steps = self.clock.locate(step)
        phase1 = self.clock.in_first_phase(step)
        if not phase1:
            return self.draw_plan(self.splits.train_images.shape[0], seed, epoch), \
                first, epoch_steps, False
        plan = self.draw_plan(self.holdout_kept.numel(), seed, epoch)
        return (EpochPlan(self.holdout_kept[plan.order], plan.offsets, plan.flips, plan.brightness, plan.contrast),
                first, epoch_steps, True)

    # ----------------------------------------------------------------- state
    def eval_model(self) -> Classifier:
        return self.ema.model if self.ema is not None else self.model

    def metadata(self, complete: bool) -> dict[str, Any]:
        s = self.state
        return {
            "model": model_spec(self.model),
            "model_params": count_params(self.model),
            "input_spec": self.model.input_spec.to_dict(),
            "classes": self.classes,
            "options": asdict(self.options),
            "recipe": asdict(self.recipe),
            "batch_size": self.batch_size, "epochs": self.epochs,
            "world_size": self.dist.world_size if self.dist else 1,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "step": s.step, "epoch": self.clock.epoch_at(s.step),
            "methodology": self.methodology, "amp": self.amp,
            "ema_updates": self.ema.num_updates if self.ema else 0,
            "train_time_s": s.train_time_s, "images_seen": s.images_seen,
            "best_accuracy": s.best_accuracy, "last_accuracy": s.last_accuracy,
            "best_step": s.best_step, "evals_since_best": s.evals_since_best,
            "eval_split": self.splits.eval_split, "skipped_steps": s.skipped_steps,
            "data": self.data_info, "complete": complete,
            "stop_reason": self.stop_reason, "partial_epoch": self.partial_epoch,
            **({"init_from": self.init_from} if self.init_from is not None else {}),
            "torch_version": torch.__version__, "device": str(self.device),
        }

    def save(self, complete: bool = False) -> None:
        if not self.is_main:
            return
        optim_state = {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        meta = self.metadata(complete)
        try:
            save_checkpoint(self.run_dir, meta, self.model.state_dict(),
                            self.ema.state_dict() if self.ema else None, optim_state,
                            best=None if self.state.best_step is None else (self.state.best_step, self.best_state))
            self.best_state = None  # written
        except CheckpointError:
            self._rewind_log()  # the records of the epochs this checkpoint would have kept are lost with them
            raise
        self._log_at_checkpoint = log_size(self.run_dir / "metrics.jsonl")
        # the reason written, not self.stop_reason now: a signal handled while the files were written changed
        # that one, and fit() must then correct run.json (recording the current one here hid the change)
        self._saved = (int(meta["step"]), str(meta["stop_reason"]))

    def _rewind_log(self) -> None:
        if self._log_at_checkpoint is not None:
            rewind_log(self.run_dir / "metrics.jsonl", self._log_at_checkpoint)

    def _restore(self, meta: dict[str, Any]) -> None:
        if meta["model"] != model_spec(self.model):
            raise CheckpointError(f"{self.run_dir}: checkpoint is for model {meta['model'].get('name') or 'cfg'}, "
                                  "not this one")
        load_weights_into(self.model, load_state(self.run_dir, meta, "model"), str(self.run_dir))
        if self.ema is not None:
            if "ema" not in meta["files"]:
                raise CheckpointError(f"{self.run_dir}: checkpoint has no averaged weights")
            load_weights_into(self.ema.model, load_state(self.run_dir, meta, "ema"), str(self.run_dir))
            self.ema.num_updates = int(meta["ema_updates"])
        elif "ema" in meta["files"]:  # resuming without them would drop the averaged weights
            raise CheckpointError(f"{self.run_dir / 'run.json'}: the checkpoint holds averaged weights but its "
                                  "recipe record keeps none (recipe.ema_decay); was the file edited?")
        ostate = load_optimizer_state(self.run_dir, meta)
        check_optimizer_state(ostate, self.optimizer, str(self.run_dir / meta["files"]["optimizer"]))
        self.optimizer.load_state_dict(ostate["optimizer"])
        torch.set_rng_state(ostate["torch_rng"])
        s = self.state
        s.step, s.train_time_s, s.images_seen = int(meta["step"]), float(meta["train_time_s"]), int(meta["images_seen"])
        s.best_accuracy, s.last_accuracy = meta.get("best_accuracy"), meta.get("last_accuracy")
        s.skipped_steps = int(meta.get("skipped_steps", 0))
        self.partial_epoch = meta.get("partial_epoch")
        self.resumed_world_size = int(meta.get("world_size", 1))  # processes that trained the run so far
        self.init_from = meta.get("init_from")
        s.best_step, s.evals_since_best = meta.get("best_step"), int(meta.get("evals_since_best") or 0)
        self._saved = (s.step, str(meta.get("stop_reason", "")))  # the checkpoint resumed from is on disk

    # ----------------------------------------------------------------- loop
    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        try:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:  # disk full, folder removed: the last checkpoint is still intact
            self._rewind_log()  # no torn line, no record newer than that checkpoint
            raise CheckpointError(f"cannot write {self.run_dir / 'metrics.jsonl'}: {exc.strerror or exc}") from None

    def loss_terms(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimize, and the detached pair ``[loss/total, loss/cross_entropy]`` that the logs
        report (their meaning: :mod:`localconv.metrics`)."""
        # Exercise 1: the loss consumes logits; softmax happens only in predict_proba.
        smoothing = self.recipe.label_smoothing
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        loss = self.loss_coeff * ce
        if self.recipe.model_decay_in_loss:
            loss = loss + self.model.regularization_loss()
        with torch.no_grad():
            plain = F.cross_entropy(logits.detach().float(), labels) if smoothing else ce
            terms = torch.stack([loss + self._update_rule_decay(), plain]).detach()
        return loss, terms

    def _update_rule_decay(self) -> torch.Tensor | float:
        # cuda-convnet's wc sits in the update (inc -= wc * lr * W): the objective it minimizes has the
        # term wc * sum(W^2) / 2, reported in loss/total so that "total" means the same for every model
        total: torch.Tensor | float = 0.0
        for g in self.optimizer.param_groups:
            if g.get("wc"):
                norms = torch._foreach_norm([p.detach() for p in g["params"]])
                total = total + 0.5 * g["wc"] * torch.stack(norms).float().pow(2).sum()
        return total

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a prepared batch; advances ``state.step``."""
        set_lr(self.optimizer, self.schedule.multiplier(self.state.step))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.forward(x)
        loss, self.last_terms = self.loss_terms(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for cb in self.callbacks:
            cb.after_backward(self, loss)
        if ddp.any_true(not torch.isfinite(loss).item(), self.dist, self.device):
            if not self.options.skip_nonfinite:
                raise NonFiniteLoss(self._nonfinite_message(loss, x))
            self.state.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
        else:
            # training accuracy of the batch as the step saw it (Keras' "accuracy"); summed on the device
            self.train_hits = self.train_hits + (logits.detach().argmax(1) == y).sum()
            self.train_seen += y.numel()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        self.state.step += 1
        self.state.images_seen += x.shape[0]
        for cb in self.callbacks:
            cb.after_step(self, loss)
        return loss.detach()

    def warm_up(self) -> float:
        """One-time work before timed training, leaving the weights as they were: ``torch.compile``'s
        compilation and, for ``--step graph``, the CUDA graph capture. Returns the seconds it took
        (the fast-training literature reports this apart from the training time)."""
        t0 = time.perf_counter()
        if self.step_mode == "eager":
            if self.options.compile:
                spec = self.train_spec
                plan = self.draw_plan(self.local_batch, self.options.seed, 0).to(self.device)
                mean = self.model.pixel_mean if self.model.needs_pixel_mean() else None
                x = train_batch(self.splits.train_images[:self.local_batch], plan, spec, mean)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    self.forward(x).float().sum().backward()
                self.optimizer.zero_grad(set_to_none=True)
        else:
            fused = self._fused_runner()
            plan, first, _, _ = self.epoch_plan(self.state.step, self.options.seed)
            fused.start_epoch(plan.to(self.device), first)
            if self.step_mode == "graph":
                fused.capture_graph()
            elif self.options.compile:
                fused.warm_up(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def _fused_runner(self) -> FusedStep:
        # built on first use, after any resume: it holds the optimizer's momentum buffers
        if self.fused is None:
            self.fused = FusedStep(self, capture=self.step_mode == "graph")
        return self.fused

    def _fused_step(self, fused: FusedStep, last_in_epoch: bool) -> torch.Tensor:
        """One device-side step; the host only keeps its own counters and polls now and then."""
        s = self.state
        set_lr(self.optimizer, self.schedule.multiplier(s.step))  # host copy of the rate, for logs and checkpoints
        fused.run()
        s.step += 1
        s.images_seen += self.local_batch
        if self.ema is not None:
            self.ema.num_updates += 1
        if s.step % FUSED_POLL_EVERY == 0 and not last_in_epoch:
            self._check_fused(fused)
        loss = fused.loss
        self.last_terms = fused.terms
        if self.callbacks:
            loss = loss.clone()  # the static output is overwritten by the next step
            self.last_terms = fused.terms.clone()
            for cb in self.callbacks:
                cb.after_step(self, loss)
        return loss

    def _check_fused(self, fused: FusedStep) -> None:
        bad_step = int(fused.first_nonfinite_step)  # the one host sync of the fused step
        if bad_step < 0:
            return
        kept = self._kept_checkpoint()
        raise NonFiniteLoss(
            f"loss became non-finite at step {bad_step} (found at step {self.state.step}: --step "
            f"{self.step_mode} checks every {FUSED_POLL_EVERY} steps, after the update); {kept}; lower the "
            "learning rate, or rerun from the checkpoint with --step eager, which stops before the bad update "
            "and names the first non-finite layer")

    def _nonfinite_message(self, loss: torch.Tensor, x: torch.Tensor) -> str:
        try:  # replay the batch with hooks: the weights are still those of the last good step
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                layer = first_nonfinite_layer(self.model, x)
        except Exception:  # diagnosis must never hide the original problem
            layer = None
        where = f", first non-finite in layer {layer}" if layer else ""
        return (f"loss became {loss.item()} at step {self.state.step}{where}; {self._kept_checkpoint()}; "
                "lower the learning rate, or use --skip-nonfinite to skip such batches")

    def _check_weights(self) -> None:
        """Raise :class:`NonFiniteLoss` (exit 3) if a raw or averaged weight holds NaN or Inf: such weights must
        never be evaluated (constant predictions, a meaningless accuracy) nor checkpointed."""
        states = [("", self.model.state_dict())]
        if self.ema is not None:
            states.append(("averaged ", self.ema.state_dict()))
        tensors = [(prefix + name, t) for prefix, state in states for name, t in state.items() if t.is_floating_point()]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).cpu()  # one host sync
        if bool(finite.all()):
            return
        bad = tensors[int((~finite).nonzero()[0])][0]
        raise NonFiniteLoss(f"weights became non-finite by step {self.state.step} (tensor {bad!r} holds NaN or "
                            f"Inf); {self._kept_checkpoint()}; lower the learning rate")

    def _kept_checkpoint(self) -> str:
        try:
            meta = read_meta(self.run_dir, missing_ok=True)
        except LocalconvError:
            meta = None
        return (f"the last good checkpoint (step {meta['step']}) is kept" if meta
                else "no checkpoint had been written yet")

    def evaluate_now(self, progress: bool = False, holdout: bool = False) -> float:
        """Accuracy on the evaluation split, or with ``holdout`` on phase 1's held-out images (``progress``: show
        a bar while it runs, on the main process)."""
        images, labels = self.holdout_set if holdout else self.splits.eval_set()
        views = "flip" if self.recipe.tta == "flip" else "single"
        desc = f"eval {'holdout' if holdout else self.splits.eval_split}" if progress and self.is_main else None
        result = evaluate(self.eval_model(), images, labels, views=views, amp=self.amp, progress=desc)
        correct, n = ddp.all_sum([result.accuracy * result.n if result.n else 0.0, float(result.n)],
                                 self.dist, self.device)
        return correct / n if n else float("nan")

    def _track_best(self, acc: float, done: bool) -> None:
        """Keep the weights of the best evaluation (saved as best-<step>.safetensors with the next checkpoint)
        and stop early after ``options.early_stop`` evaluations without a better accuracy."""
        s = self.state
        if s.best_accuracy is None or acc > s.best_accuracy:
            s.best_accuracy, s.best_step, s.evals_since_best = acc, s.step, 0
            if self.is_main:
                self.best_state = {k: v.detach().to("cpu", copy=True)
                                   for k, v in self.eval_model().state_dict().items()}
            return
        s.evals_since_best += 1
        patience = self.options.early_stop
        if patience and s.evals_since_best >= patience and not done:
            self.should_stop = True
            self.stop_reason = (f"early stop: no better {self.splits.eval_split} accuracy in {patience} evaluation"
                                f"{'s' if patience != 1 else ''} (best {format_accuracy(s.best_accuracy)} at step "
                                f"{s.best_step})")

    def _agree_to_stop(self) -> bool:
        """Whether some rank asks to stop, the same answer on every rank (one process: ``should_stop``). A rank
        stopped by another's signal takes that signal as its reason: torchrun forwards a signal to each process
        at its own moment, and rank 0, which checkpoints and reports, may get it last."""
        if self.dist is None:
            return self.should_stop
        asked, interrupted, terminated = ddp.all_sum(
            [float(self.should_stop), float(self.stop_reason == "interrupted"),
             float(self.stop_reason == "terminated")], self.dist, self.device)
        if asked and not self.stop_reason and (interrupted or terminated):
            self.stop_reason = "terminated" if terminated else "interrupted"
            self._interrupted = True  # this rank's own copy of the signal, when it comes, is the same request
        self.should_stop = self.should_stop or asked > 0
        return asked > 0

    def handle_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        """Ctrl-C (SIGINT) and SIGTERM (what schedulers send before a kill): finish the step, checkpoint, stop.
        fit() installs it; a caller may pass signals on to it outside fit() (train's: a signal between fit()'s
        return and the process's exit must not end it silently)."""
        if self._finished:  # the loop has ended and its last checkpoint records its reason: changing the reason
            return          # now would make the caller report a stop that run.json does not say
        if self._interrupted:  # a second signal: stop now
            if self.dist is not None:  # torchrun forwards the signal the processes got already: a copy, not a
                return                 # second request (torchrun escalates to SIGKILL itself); every rank must
            if signum == signal.SIGTERM:  # a scheduler insisting: exit as SIGTERM does (143), not as Ctrl-C
                print("terminated (a second SIGTERM): stopped at once, the last checkpoint is kept",
                      file=sys.stderr)
                raise SystemExit(143)
            raise KeyboardInterrupt    # reach the same collectives
        self._interrupted = True
        self.should_stop = True
        self.stop_reason = "terminated" if signum == signal.SIGTERM else "interrupted"

    def fit(self) -> TrainState:
        """Train to the end (or until a callback or Ctrl-C stops it); returns the final state."""
        from tqdm.auto import tqdm

        if self.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CheckpointError(f"cannot create the run folder {self.run_dir}: {exc.strerror or exc}") from None
            trim_log(self.run_dir / "metrics.jsonl", self.state.step)  # records after the checkpoint resumed from
            self._log_at_checkpoint = log_size(self.run_dir / "metrics.jsonl")
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        old_handlers = ({sig: signal.signal(sig, self.handle_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
                        if _main_thread() else {})
        s = self.state
        showing = self.options.progress and self.is_main
        # a bar on a terminal; in a log file (stderr not a terminal) plain step and epoch lines (plain_progress.py)
        bar = tqdm(total=self.total_steps, initial=s.step, disable=not (showing and stderr_is_terminal()),
                   unit="step",
                   dynamic_ncols=True, leave=True, desc="train")
        plain = PlainProgress(self.total_steps, enabled=showing and bar.disable)
        images, labels = self.splits.train_images, self.splits.train_labels
        spec, mean = self.train_spec, getattr(self.model, "pixel_mean", None)
        # each rank draws its own plan over its own shard
        plan_seed = self.options.seed + (1_000_003 * self.dist.rank if self.dist else 0)
        mean = mean if self.model.needs_pixel_mean() else None
        fused = self._fused_runner() if self.step_mode != "eager" else None
        meter = LossMeter(self.device)
        # the step of the last checkpoint on disk, the same on every rank (_saved is rank 0's until it saves)
        saved_at = self._saved[0] if self._saved is not None else None
        self._finished = False
        try:
            leave = False  # the same on every rank: a signal lands on each process at its own moment
            while s.step < self.total_steps and not leave:
                plan, first, epoch_steps, phase1 = self.epoch_plan(s.step, plan_seed)
                plan = plan.to(self.device)
                t0, seen0 = time.perf_counter(), s.images_seen
                meter.start_epoch()
                self.train_hits, self.train_seen = 0, 0
                if self.partial_epoch is not None and first > 0:  # resumed within this epoch
                    meter.restore(self.partial_epoch)
                    self.train_hits = int(self.partial_epoch.get("train_hits", 0))
                    self.train_seen = int(self.partial_epoch.get("train_seen", 0))
                self.partial_epoch = None
                if fused is not None:
                    fused.start_epoch(plan, first)
                    fused.reset_loss_sum()
                step0 = s.step
                for k in range(first, epoch_steps):
                    # every rank must stop at the same step: decide on the agreed answer, never on the flag,
                    # which a signal handler may set on one rank right after this exchange
                    stop = self._agree_to_stop()
                    if s.step >= self.total_steps or stop:
                        break
                    if fused is not None:
                        self._fused_step(fused, last_in_epoch=k == epoch_steps - 1)
                        show = s.step % FUSED_POLL_EVERY == 0 or s.step == self.total_steps
                    else:
                        b = plan.batch(k * self.local_batch, (k + 1) * self.local_batch)
                        x = train_batch(images[b.order], b, spec, mean)
                        x = x.contiguous(memory_format=torch.channels_last)
                        skipped = s.skipped_steps
                        self.train_step(x, labels[b.order])
                        if s.skipped_steps == skipped:  # skipped (non-finite) batches stay out of the mean
                            meter.add(self.last_terms)
                        show = s.step % 10 == 0 or s.step == self.total_steps
                    if show:
                        rate = (s.images_seen - seen0) / max(1e-9, time.perf_counter() - t0)
                        total, ce = self.last_terms.tolist()
                        postfix = {"loss/total": f"{total:.3f}", "cross_entropy": f"{ce:.3f}",
                                   "img/s": f"{rate:.0f}"}
                        bar.set_postfix(postfix, refresh=False)
                        plain.step(s.step, self.clock.epoch_at(s.step), postfix)
                    bar.update(1)
                    if self.log_every and s.step % self.log_every == 0:
                        if fused is not None:
                            meter.copy_from(fused.terms_sum, int(fused.finite_steps))
                        self.log({"kind": "step", "step": s.step, "epoch": self.clock.epoch_at(s.step),
                                  **meter.interval_means(), "lr": self.optimizer.param_groups[0]["lr"]})
                if s.step == step0 and self.should_stop and saved_at == s.step:
                    # a stop agreed before this pass took a step, right after a checkpoint at this step: that
                    # epoch's record is logged and its weights saved; logging it again would repeat the record
                    # (the reason is set in run.json below). should_stop and saved_at agree on every rank.
                    leave = True
                    continue
                if fused is not None:
                    self._check_fused(fused)  # before any checkpoint: never save weights after a bad update
                    meter.copy_from(fused.terms_sum, int(fused.finite_steps))
                self._check_weights()  # before this epoch's evaluation and checkpoint (a finite loss can
                                       # still take a step to Inf weights: --lr 1e308)
                epoch_time = time.perf_counter() - t0
                s.train_time_s += epoch_time
                at_epoch_end = self.clock.at_epoch_end(s.step)
                done = s.step >= self.total_steps
                record: dict[str, Any] = {
                    "kind": "epoch", "epoch": self.clock.epoch_at(s.step), "step": s.step,
                    **dict(zip(LOSS_KEYS, (v / (self.dist.world_size if self.dist else 1)
                                           for v in ddp.all_sum(meter.epoch_means(), self.dist, self.device)))),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "images_per_s": (s.images_seen - seen0) * (self.dist.world_size if self.dist else 1)
                    / max(1e-9, epoch_time),
                }
                if self.train_seen:  # eager steps count their batches' hits; fused and graph steps do not
                    hits, seen = ddp.all_sum([float(self.train_hits), float(self.train_seen)], self.dist, self.device)
                    record["train_accuracy"] = hits / seen
                full_epoch = int(self.clock.epoch_at(s.step))
                due = (at_epoch_end or done) and (
                    done or (self.options.eval_every and full_epoch % self.options.eval_every == 0))
                if phase1:  # cuda-convnet's methodology: phase 1 is validated on its held-out batch 5
                    record["phase"] = 1
                    if due:
                        t1 = time.perf_counter()
                        record["holdout_accuracy"] = self.evaluate_now(progress=not bar.disable, holdout=True)
                        s.train_time_s += time.perf_counter() - t1
                if due and (done or not phase1):  # the test set is not consulted during phase 1
                    t1 = time.perf_counter()
                    acc = self.evaluate_now(progress=not bar.disable)
                    s.train_time_s += time.perf_counter() - t1
                    s.last_accuracy = acc
                    self._track_best(acc, done)
                    record.update(accuracy=acc, eval_split=self.splits.eval_split)
                if self.is_main and (due or (plain.enabled and (at_epoch_end or done))):  # a log: every epoch
                    plain.restart()
                    shown = [f"{name} accuracy {format_accuracy(record[key])}" for name, key in
                             (("holdout", "holdout_accuracy"), (self.splits.eval_split, "accuracy")) if key in record]
                    bar.write(", ".join([f"epoch {record['epoch']:.2f}: {LOSS_TOTAL} {record[LOSS_TOTAL]:.4f}",
                                         f"{LOSS_CROSS_ENTROPY} {record[LOSS_CROSS_ENTROPY]:.4f}", *shown]))
                record["wall_s"] = s.train_time_s
                # A stop within an epoch (Ctrl-C, SIGTERM, --stop-on-problem) logs no record: the checkpoint keeps
                # the epoch's loss sums (run.json partial_epoch) and the resumed run logs the whole epoch once.
                # Under torchrun each rank has its own sums: the resumed record averages the steps after the resume.
                partial = self.should_stop and not (at_epoch_end or done)
                self.partial_epoch = meter.state() if partial and self.dist is None else None
                if self.partial_epoch is not None:  # and its training-accuracy counts
                    self.partial_epoch.update(train_hits=int(self.train_hits), train_seen=self.train_seen)
                if not partial:
                    s.history.append(record)
                    self.log(record)
                    for cb in self.callbacks:
                        cb.on_epoch_end(self, record)
                if done or self.should_stop or full_epoch % self.options.checkpoint_every == 0:
                    self.save(complete=done or self.stop_reason.startswith("early stop"))
                    saved_at = s.step
                leave = self._agree_to_stop()
            self._finished = True  # from here on the reason is fixed: a later signal is ignored (handle_signal)
            if self.is_main and self._saved is not None and self._saved != (s.step, self.stop_reason) \
                    and self._saved[0] == s.step:  # a signal that came while (or after) the last checkpoint was
                update_meta(self.run_dir, stop_reason=self.stop_reason)  # written: run.json says it too
        except NonFiniteLoss:
            bar.close()
            self.stop_reason = "non-finite loss"
            raise
        finally:
            self._finished = True
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        ddp.barrier(self.dist)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return s


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
