"""``localconv.diagnose``: the doctor on any PyTorch model, with the user's data, loss and optimizer.

It trains the model (in place: nothing is restored afterwards) for a few hundred steps under the one
watcher (:class:`~localconv.diagnostics.watch.Watch`), measures the accuracy on images it held out,
and returns the doctor's report. Torch only: it works on models that know nothing of localconv.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import run_checks
from ..layer_hooks import weight_layers, weight_params
from .report import DoctorReport
from .watch import Watch

DEFAULT_STEPS = 300
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 0.01
DEFAULT_MOMENTUM = 0.9
HOLDOUT_SHARE = 5        # tensors given: a fifth of the images is held out...
MAX_HELD_OUT = 1000      # ... at most this many


def default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """What :func:`diagnose` trains with when given no optimizer: SGD, lr 0.01, momentum 0.9."""
    return torch.optim.SGD(model.parameters(), lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    keys = [k for k in ("lr", "momentum", "weight_decay") if isinstance(group.get(k), (int, float)) and group[k]]
    return f"{type(optimizer).__name__}(" + ", ".join(f"{k}={group[k]:g}" for k in keys) + ")"


def expects_logits(loss_fn: Callable[..., torch.Tensor]) -> bool:
    """The loss applies a softmax itself: cross-entropy in its functional or module form, or a function
    that says so with an attribute ``expects_logits = True`` (a cross-entropy plus weight decay, say)."""
    declared = getattr(loss_fn, "expects_logits", None)
    if isinstance(declared, bool):
        return declared
    return loss_fn is F.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss)


def layers_left_out(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Weight layers with a trainable weight that is in none of the optimizer's parameter groups."""
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [name for name, module in weight_layers(model).items()
            if any(p.requires_grad and id(p) not in given for p in weight_params(module))]


class _Batches:
    """Training batches from a tensor pair (shuffled every pass, a share held out) or from any iterable
    of ``(inputs, targets)`` (re-iterated as passes when it runs out)."""

    def __init__(self, data: Any, batch_size: int, seed: int) -> None:
        self.held_out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.passes = 0
        self.first_pass_images = 0   # images of the first pass (an iterable: known once it ends)
        self.first_pass_done = False
        if _is_tensor_pair(data):
            inputs, targets = data
            n = len(inputs)
            if len(targets) != n:
                raise ValueError(f"diagnose: data has {n} inputs but {len(targets)} targets")
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=generator)
            held = min(MAX_HELD_OUT, n // HOLDOUT_SHARE)
            if held:
                self.held_out = (inputs[order[:held]], targets[order[:held]])
            self.inputs, self.targets = inputs[order[held:]], targets[order[held:]]
            if len(self.inputs) == 0:
                raise ValueError("diagnose: no training images (data is empty)")
            self.batch_size = min(batch_size, len(self.inputs))
            self.generator = generator
            self.trained_on: int | None = len(self.inputs)
            self.source: Iterable[Any] | None = None
        else:
            if not isinstance(data, Iterable):
                raise TypeError("diagnose: data must be a DataLoader, an iterable of (inputs, targets) batches, "
                                f"or a pair of tensors (inputs, targets); got {type(data).__name__}")
            self.source = data
            self.batch_size = batch_size  # of the held-out evaluation only: the batches are the iterable's
            dataset = getattr(data, "dataset", None)  # a DataLoader's: one pass goes over it
            self.trained_on = len(dataset) if hasattr(dataset, "__len__") else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            got = 0
            for batch in self._one_pass():
                got += 1
                if not self.first_pass_done:
                    self.first_pass_images += len(batch[1])
                yield batch
            if got == 0:
                if self.first_pass_done:
                    raise ValueError(f"diagnose: the data ran out after {self.first_pass_images} images and cannot be "
                                     "iterated again (a generator or iterator?): pass a list or a DataLoader, or "
                                     "fewer steps")
                raise ValueError("diagnose: the data yielded no batches")
            if not self.first_pass_done:
                self.first_pass_done = True
                if self.trained_on is None or self.first_pass_images > self.trained_on:
                    self.trained_on = self.first_pass_images
            self.passes += 1

    def _one_pass(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.source is None:
            order = torch.randperm(len(self.inputs), generator=self.generator)
            for i in range(0, len(order) - self.batch_size + 1, self.batch_size):
                idx = order[i:i + self.batch_size]
                yield self.inputs[idx], self.targets[idx]
            return
        for batch in self.source:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError("diagnose: each batch must be an (inputs, targets) pair, got "
                                f"{type(batch).__name__}")
            yield batch[0], batch[1]


def _is_tensor_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data) and data[0].ndim >= 1 and data[0].shape[0] > 0
            and data[1].ndim >= 1)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def _evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
              batch_size: int, loss_fn: Callable[..., torch.Tensor]) -> tuple[int, float] | None:
    """(correct predictions, mean loss) on the held-out images (eval mode; the model's mode is restored)."""
    if targets.ndim != 1 or targets.is_floating_point():
        return None  # not class labels
    was_training = model.training
    model.eval()
    try:
        correct, loss_sum = 0, 0.0
        for i in range(0, len(inputs), batch_size):
            x, y = inputs[i:i + batch_size].to(device), targets[i:i + batch_size].to(device)
            out = model(x)
            if not isinstance(out, torch.Tensor) or out.ndim != 2:
                return None
            correct += int((out.argmax(dim=1) == y).sum())
            loss = loss_fn(out, y)
            loss_sum += float(loss[1] if isinstance(loss, tuple) else loss) * len(y)
        return correct, loss_sum / len(inputs)
    finally:
        model.train(was_training)


def diagnose(model: nn.Module, data: Any, *, loss_fn: Callable[..., torch.Tensor] | None = None,
             optimizer: torch.optim.Optimizer | None = None, steps: int | None = None,
             device: str | torch.device | None = None, batch_size: int = DEFAULT_BATCH_SIZE, every: int = 5,
             seed: int = 0, name: str | None = None,
             held_out: tuple[torch.Tensor, torch.Tensor] | None = None, dense_start: int = 10) -> DoctorReport:
    """Train ``model`` for ``steps`` steps (default 300) while watching every layer that owns weights, and return
    the doctor's report (``report.findings``, ``report.ok``, ``print(report)``, ``report.to_dict()``).

    ``data``: a ``DataLoader`` or any iterable of ``(inputs, targets)`` batches (re-iterated when it runs out;
    accuracy is then measured on each batch of the first pass before the step trains on it), or a pair of
    tensors ``(inputs, targets)``: the doctor holds out a fifth (at most 1,000) to measure the accuracy on and
    batches the rest itself (``batch_size``, reshuffled every pass with ``seed``). ``held_out``: ``(inputs,
    targets)`` to measure the accuracy on instead (with an iterable ``data``). ``loss_fn(outputs, targets)``:
    default ``F.cross_entropy``; it may return a pair ``(loss, data_loss)``: the first is minimized, the second
    (the loss without weight-decay terms, say) is what the doctor judges; a function with ``expects_logits =
    True`` is checked for a softmax before it, as cross-entropy is. ``optimizer``: yours, used as given (a
    learning-rate bug lives there); default SGD with lr 0.01 and momentum 0.9. ``device``: where to train (the
    model is moved there); default: where the model's parameters are. The model **is trained**: its weights
    change, and nothing is restored.
    """
    steps = DEFAULT_STEPS if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"diagnose: steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"diagnose: batch_size must be >= 1, got {batch_size}")
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"diagnose: device {str(device)!r} asked for, but CUDA is not available here")
        model.to(device)
    target_device = _model_device(model)
    loss_fn = loss_fn or F.cross_entropy
    optimizer = optimizer or default_optimizer(model)
    batches = _Batches(data, batch_size, seed)
    if held_out is not None:
        batches.held_out = held_out
    watch = Watch(model, every=every, expects_logits=expects_logits(loss_fn), dense_start=dense_start)
    history = watch.history
    history.not_in_optimizer = layers_left_out(model, optimizer)
    first_pass: list[tuple[int, int, int]] = []   # (step, correct, n) measured before training on the batch
    stopped, steps_run = "", 0
    model.train()
    with watch:
        for step, (x, y) in zip(range(steps), batches):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                raise TypeError("diagnose: each batch must be a pair of tensors (inputs, targets), got "
                                f"({type(x).__name__}, {type(y).__name__}); a model of several inputs: wrap it in a "
                                "module that takes one tensor")
            x, y = x.to(target_device), y.to(target_device)
            outputs = model(x)
            loss = loss_fn(outputs, y)
            loss, data_loss = loss if isinstance(loss, tuple) else (loss, None)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(f"diagnose: loss_fn must return a scalar tensor (one number), got {shape}; "
                                 "reduce it, e.g. reduction='mean'")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            seen = len(history.accuracy)
            watch.monitor.observe_backward(loss, data_loss, targets=y)
            if not batches.first_pass_done and len(history.accuracy) > seen:
                first_pass.append(history.accuracy[-1])
            if not math.isfinite(float(loss.detach())):
                stopped = f"the loss became {float(loss.detach())} at step {step}"
                watch.after_step()
                break
            optimizer.step()
            watch.after_step()
            steps_run = step + 1
    held_out_count = len(batches.held_out[0]) if batches.held_out is not None else 0
    accuracy = None
    if batches.held_out is not None and not stopped:
        hx, hy = batches.held_out
        measured = _evaluate(model, hx, hy, target_device, batches.batch_size, loss_fn)
        if measured is not None:
            correct, history.unseen_loss = measured
            accuracy = correct / held_out_count
            history.unseen = (correct, held_out_count)
    elif first_pass and not stopped:
        late = first_pass[len(first_pass) // 2:]  # the second half: the network has had time to learn
        correct, n = sum(c for _, c, _ in late), sum(k for _, _, k in late)
        history.unseen = (correct, n)
        accuracy = correct / n if n else None
        steps_seen = {step for step, _, _ in late}  # their losses were measured before their steps too
        losses = [x for step, x in history.losses if step in steps_seen and math.isfinite(x)]
        history.unseen_loss = sum(losses) / len(losses) if losses else None
    history.trained_on = batches.trained_on
    findings = run_checks(history)
    return DoctorReport(name or type(model).__name__, history, findings, steps_run, steps,
                        batches.batch_size if batches.source is None else None, describe_optimizer(optimizer),
                        accuracy, stopped, held_out=held_out_count)
