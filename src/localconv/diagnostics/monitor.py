"""Per-layer statistics of a training run, gathered by forward hooks (what the doctor looks at).

:class:`LayerMonitor` is the one watcher behind ``localconv doctor``, ``localconv.diagnose``,
``localconv.Watch`` and ``train --watch``; it stands on torch alone and is driven by two calls,
:meth:`~LayerMonitor.observe_backward` and :meth:`~LayerMonitor.observe_step` (the training engine
calls them through the callback methods of the same object). On every ``every``-th step it records,
for each weight layer (a module that owns a weight matrix or filter bank: ``nn.Conv2d``,
``nn.Linear``, :class:`~localconv.nn.LocallyConnected2d`, the cuda-convnet layers...), in forward
order:

* the layer's activations after its nonlinearity: mean, RMS, *signal* (the spread between the
  images of the batch, i.e. what carries information) and the fraction of dead ReLU units;
* the same signal of the layer's input, so that gains are judged relative to the input's scale;
* the gradient arriving at the layer's activations and the one it passes on to its input
  (per-image norms), the weight gradient, and the update/weight ratio of the optimizer step.

The nonlinearity of a layer is the first activation module (``nn.ReLU``, a cuda-convnet neuron...)
run after the layer starts and before the next weight layer: that covers both a ``neuron``
inside the layer (cuda-convnet ops) and a shared ``self.relu`` applied outside it (TF models).

Every training step, also unmonitored ones, each layer's output is checked for NaN/Inf
(a reduction on the device, read only when the loss turns non-finite), so that a non-finite
loss can be traced to the first layer where it appeared (:attr:`LayerMonitor.nonfinite`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..layer_hooks import LayerHooks, checksum, locate_nonfinite, weight_params

SATURATED_PROB = 0.999  # a top softmax probability this close to 1 counts as saturated
PROBABILITY_CHECK_STEPS = 3  # outputs that are probabilities in the first steps: a softmax inside the model

def is_rectifier(module: nn.Module | None) -> bool:
    """Activations whose units can die: output stuck at 0 for every input (ReLU, brelu, ReLU6)."""
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return True
    return isinstance(module, nn.Hardtanh) and module.min_val == 0.0


def fan_in(module: nn.Module) -> int:
    """Inputs seen by one output unit, summed over the layer's inputs (``weight``, ``weight_1``...)."""
    own = getattr(module, "fan_in", None)
    if isinstance(own, int) and len(weight_params(module)) == 1:
        return own
    total = 0
    for w in weight_params(module):
        # [out, in, kh, kw] / [out, in]; locally connected [oh, ow, out, in, kh, kw]
        total += w[0, 0, 0].numel() if w.ndim == 6 else w[0].numel()
    return total


@dataclass
class LayerStats:
    """One layer at one monitored step (floats; None where not applicable)."""

    step: int
    act_mean: float            # mean of the activations (after the nonlinearity)
    act_rms: float             # root mean square of the activations
    signal: float              # RMS over units of each unit's std across the batch's images
    in_signal: float           # the same for the layer's input
    in_rms: float              # root mean square of the layer's input
    dead_frac: float | None    # rectifier units at 0 for every image of the batch (None: no rectifier)
    grad_out: float | None     # RMS over images of |dLoss/d activations| (per-image norm)
    grad_in: float | None      # RMS over images of |dLoss/d input| (None: the input needs no gradient)
    weight_rms: float          # RMS of the layer's weights (before the step)
    grad_rms: float | None     # RMS of the weight gradient
    update_ratio: float | None  # |W_after - W_before| / |W_before| of this step
    finite_act: bool = True
    finite_grad: bool = True
    finite_weight: bool = True
    in_mean: float = 0.0       # mean of the layer's input (raw 0..255 pixels: ~120)

    @property
    def forward_gain(self) -> float:
        """How much of its input's image-to-image variation the layer passes on (~1 = fan-in scaled)."""
        return self.signal / self.in_signal if self.in_signal > 0 else math.nan

    @property
    def backward_gain(self) -> float | None:
        """How much of the gradient reaching the layer it passes on to the layers below."""
        if self.grad_in is None or self.grad_out is None or not self.grad_out > 0:
            return None
        return self.grad_in / self.grad_out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["forward_gain"] = self.forward_gain
        d["backward_gain"] = self.backward_gain
        return d


@dataclass
class OutputStats:
    """The logits at one monitored step."""

    step: int
    loss: float               # cross-entropy (without weight-decay terms)
    logit_std: float          # spread of the logits (all images and classes)
    max_prob: float           # mean over images of the top softmax probability
    saturated_frac: float     # images whose top probability exceeds SATURATED_PROB


@dataclass
class NonFiniteEvent:
    """Where NaN/Inf first showed up: ``where`` is 'weights', 'activations', 'gradients' or 'loss'."""

    step: int
    layer: str | None
    where: str
    loss: float


@dataclass
class MonitorHistory:
    """Everything a monitor recorded; checks read this."""

    layers: list[str] = field(default_factory=list)                 # weight layers in forward order
    stats: dict[str, list[LayerStats]] = field(default_factory=dict)  # layer -> one entry per monitored step
    outputs: list[OutputStats] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)    # (step, cross-entropy) of every step
    nonfinite: NonFiniteEvent | None = None
    rectified: dict[str, bool] = field(default_factory=dict)        # layer -> has a rectifier
    fan_in: dict[str, int] = field(default_factory=dict)            # layer -> inputs per output unit
    num_classes: int = 10
    activations: dict[str, str] = field(default_factory=dict)      # layer -> its nonlinearity's class name
    expects_logits: bool = True          # the loss applies a softmax itself (cross-entropy)
    probabilities_out: bool = False      # the model's outputs were probabilities (rows >= 0 summing to 1)
    softmax_module: str | None = None    # the nn.Softmax module of the model, if it has one
    not_in_optimizer: list[str] = field(default_factory=list)     # weight layers left out of the optimizer
    frozen: list[str] = field(default_factory=list)   # weight layers frozen on purpose (no weight requires_grad)
    accuracy: list[tuple[int, int, int]] = field(default_factory=list)  # (step, correct, n) before each step
    unseen: tuple[int, int] | None = None  # (correct, n) on images the model never trained on
    unseen_loss: float | None = None       # the loss on those images (at the end of the run)
    trained_on: int | None = None          # training images (None: unknown, a stream)

    @property
    def monitored_steps(self) -> list[int]:
        first = self.layers[0] if self.layers else None
        return [s.step for s in self.stats.get(first, [])] if first else []

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "num_classes": self.num_classes, "fan_in": self.fan_in,
                "stats": {k: [s.to_dict() for s in v] for k, v in self.stats.items()},
                "outputs": [asdict(o) for o in self.outputs],
                "losses": self.losses, "activations": self.activations,
                "expects_logits": self.expects_logits, "probabilities_out": self.probabilities_out,
                "not_in_optimizer": self.not_in_optimizer, "frozen": self.frozen,
                "unseen": self.unseen, "unseen_loss": self.unseen_loss,
                "trained_on": self.trained_on,
                "nonfinite": asdict(self.nonfinite) if self.nonfinite else None}


def data_loss(trainer: Any, loss: torch.Tensor) -> torch.Tensor:
    """The trainer's loss without its weight-decay term and cost coefficient: the cross-entropy."""
    with torch.no_grad():
        if trainer.recipe.model_decay_in_loss:
            loss = loss - trainer.model.regularization_loss()
        return loss / trainer.loss_coeff if trainer.loss_coeff else loss


def _signal(t: torch.Tensor) -> torch.Tensor:
    """RMS over units of the std across images: the part of a batch that differs between images."""
    flat = t.detach().float().flatten(1)
    if flat.shape[0] < 2:
        return flat.new_zeros(())
    # written out: the same (unbiased) variance as flat.var(dim=0), ~5x less CPU time than torch's
    # reduction across rows for these wide, short matrices (a third of the monitor's cost). Shifted by
    # the first image first, so that a unit equal for every image gives exactly 0, as var does (its
    # mean would round): a layer fed a constant must keep an undefined gain, not a ratio of noise.
    centred = flat - flat[:1]  # a new tensor: the rest is done in place (half the time again)
    centred -= centred.mean(dim=0)
    return centred.square_().sum(dim=0).div_(flat.shape[0] - 1).mean().sqrt()


def _per_image_norm_rms(g: torch.Tensor) -> torch.Tensor:
    return g.detach().float().flatten(1).norm(dim=1).pow(2).mean().sqrt()


class LayerMonitor:
    """Records :class:`LayerStats` of every weight layer every ``every`` steps (see module doc).

    ``keep_tensors``: also keep the last monitored step's activations and their gradients
    (``last_tensors``), for TensorBoard histograms. ``dense_start``: monitor each of the first
    steps too (a run that blows up in five steps still leaves a trace).
    """

    def __init__(self, every: int = 10, keep_tensors: bool = False, dense_start: int = 0) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.dense_start = dense_start  # also monitor every one of the first steps (fast blow-ups)
        self.keep_tensors = keep_tensors
        self.history = MonitorHistory()
        self.hooks: LayerHooks | None = None
        self.last_tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.samples = 0  # monitored steps recorded so far
        self._armed = False
        self._classes_known = True
        self._step = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self._before: dict[str, list[torch.Tensor]] = {}
        self._output: dict[str, torch.Tensor] | None = None
        self._loss: torch.Tensor | None = None

    # ----------------------------------------------------------- attachment
    def attach(self, model: nn.Module, step: int = 0) -> None:
        self.detach()
        self.hooks = LayerHooks(model)
        softmaxes = [name for name, m in model.named_modules() if isinstance(m, nn.Softmax)]
        self.history.softmax_module = softmaxes[-1] if softmaxes else None
        self.history.num_classes = int(getattr(model, "num_classes", 10))
        self._classes_known = hasattr(model, "num_classes")  # else: the width of the outputs
        self.history.fan_in = {name: fan_in(m) for name, m in self.hooks.layers.items()}
        self.history.frozen = [name for name, m in self.hooks.layers.items()
                               if not any(p.requires_grad for p in weight_params(m))]
        self._arm(step)

    def detach(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    def _arm(self, step: int) -> None:
        self._step = step
        self._armed = step % self.every == 0 or step < self.dense_start
        if self.hooks is not None:
            self.hooks.detail = self._armed

    # ------------------------------------------------------ engine callbacks
    # (the methods of localconv.training.callbacks.Callback, duck-typed: diagnostics never import training)
    def on_train_start(self, trainer: Any) -> None:
        self.attach(trainer.model, trainer.state.step)

    def on_train_end(self, trainer: Any) -> None:  # noqa: ARG002
        self.detach()

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None: ...

    def after_backward(self, trainer: Any, loss: torch.Tensor) -> None:
        self.observe_backward(loss, data_loss(trainer, loss))

    def after_step(self, trainer: Any, loss: torch.Tensor) -> None:  # noqa: ARG002
        self.observe_step()

    def _observe_outputs(self, logits: torch.Tensor | None, targets: torch.Tensor | None) -> None:
        """Whether the model's outputs are probabilities (first steps only), and the batch's accuracy."""
        if logits is None or logits.ndim != 2:
            return
        if not self._classes_known and logits.shape[1] >= 2:
            self.history.num_classes = int(logits.shape[1])
        if self._step < PROBABILITY_CHECK_STEPS and not self.history.probabilities_out:
            out = logits.detach().float()
            self.history.probabilities_out = bool((out >= 0).all()) and bool(
                ((out.sum(dim=1) - 1).abs() < 1e-3).all())
        if targets is not None and targets.ndim == 1 and targets.shape[0] == logits.shape[0] \
                and not targets.is_floating_point():
            correct = int((logits.detach().argmax(dim=1) == targets.to(logits.device)).sum())
            self.history.accuracy.append((self._step, correct, int(targets.shape[0])))

    @property
    def step(self) -> int:
        """Index (0-based) of the step being observed; after ``observe_step``, of the next one."""
        return self._step

    # ------------------------------------------- usable without the engine too
    def observe_backward(self, loss: torch.Tensor, data_loss: torch.Tensor | None = None,
                         targets: torch.Tensor | None = None) -> None:
        """Call after ``loss.backward()`` and before ``optimizer.step()``; ``data_loss``: the loss
        without weight-decay terms (the cross-entropy), if it differs from ``loss``; ``targets``: the
        batch's class labels, to record its accuracy before the step trains on it."""
        hooks = self.hooks
        if hooks is None:
            return
        self._loss = (loss if data_loss is None else data_loss).detach()
        self._observe_outputs(hooks.logits, targets)
        if self.history.nonfinite is None and not bool(torch.isfinite(self._loss)):
            name, where = locate_nonfinite(hooks.model, hooks)
            self.history.nonfinite = NonFiniteEvent(self._step, name, where, float(self._loss))
        if not self._armed:
            return
        self._pending, self._before = {}, {}
        for name in hooks.forward_order():
            probe = hooks.probes.get(name)
            if probe is None or probe.output is None:
                continue
            module = hooks.layers[name]
            weights = [p.detach() for p in weight_params(module)]
            # a frozen weight's .grad may be a stale one, left from before it was frozen
            grads = [p.grad.detach() for p in weight_params(module) if p.grad is not None and p.requires_grad]
            act = probe.act if probe.act is not None else probe.output
            flat = act.detach().float().flatten(1)
            # integer inputs (an embedding's token ids) have no scale to judge: only real-valued ones count
            inputs = [x for x in probe.inputs if x.is_floating_point() or x.is_complex()]
            values = {
                "in_mean": torch.stack([x.detach().float().mean() for x in inputs]).mean()
                if inputs else flat.new_zeros(()),
                "act_mean": flat.mean(), "act_rms": flat.pow(2).mean().sqrt(), "signal": _signal(act),
                "in_signal": torch.stack([_signal(x) for x in inputs]).pow(2).mean().sqrt()
                if inputs else flat.new_zeros(()),
                "in_rms": torch.stack([x.detach().float().pow(2).mean() for x in inputs]).mean().sqrt()
                if inputs else flat.new_zeros(()),
                "weight_rms": torch.cat([w.float().flatten() for w in weights]).pow(2).mean().sqrt(),
                "finite_act": torch.isfinite(checksum(act)),
                "finite_weight": torch.isfinite(torch.stack([checksum(w) for w in weights]).sum()),
            }
            if is_rectifier(probe.act_module):
                # = (flat <= 0).all(dim=0), NaN included, at an eighth of the CPU time
                values["dead_frac"] = (flat.amax(dim=0) <= 0).float().mean()
            if probe.grad_out is not None:
                values["grad_out"] = _per_image_norm_rms(probe.grad_out)
            if probe.grad_in is not None:
                values["grad_in"] = _per_image_norm_rms(probe.grad_in)
            if grads:
                g = torch.cat([x.float().flatten() for x in grads])
                values["grad_rms"] = g.pow(2).mean().sqrt()
                values["finite_grad"] = torch.isfinite(checksum(g))
            self._pending[name] = values
            self._before[name] = [w.clone() for w in weights]
            if self.keep_tensors:
                kept = {"activation": act.detach()}
                if probe.grad_out is not None:
                    kept["activation_grad"] = probe.grad_out
                self.last_tensors[name] = kept
        logits = hooks.logits
        if logits is not None and logits.ndim == 2 and logits.shape[1] >= 2:  # [images, classes]: a softmax's input
            probs = torch.softmax(logits.float(), dim=-1).max(dim=-1).values
            self._output = {"logit_std": logits.float().std() if logits.numel() > 1 else logits.new_zeros(()),
                            "max_prob": probs.mean(), "saturated_frac": (probs > SATURATED_PROB).float().mean()}
        else:
            self._output = None
        for probe in hooks.probes.values():  # summarised: let the activations go
            probe.inputs, probe.output, probe.act, probe.grad_out, probe.grad_in = [], None, None, None, None

    def observe_step(self) -> None:
        """Call after ``optimizer.step()`` (or after a skipped step); moves on to the next step."""
        hooks = self.hooks
        if hooks is None or self._loss is None:
            return
        try:
            self._record_step(hooks)
        finally:
            self._loss = None
            self._arm(self._step + 1)

    def _record_step(self, hooks: LayerHooks) -> None:
        loss_value = float(self._loss)
        self.history.losses.append((self._step, loss_value))
        if not self._armed or not self._pending:
            return
        order = hooks.forward_order()
        self.history.layers = [n for n in order if n in self._pending] or self.history.layers
        for name, values in self._pending.items():
            module = hooks.layers[name]
            before = self._before[name]
            after = [p.detach() for p in weight_params(module)]
            delta = torch.stack([(a.float() - b.float()).pow(2).sum() for a, b in zip(after, before)]).sum().sqrt()
            values["weight_norm"] = torch.stack([b.float().pow(2).sum() for b in before]).sum().sqrt()
            values["update_ratio"] = delta / values["weight_norm"]
            # one transfer for all of this layer's numbers (one device sync, not one per number)
            numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
            floats = dict(zip(values, numbers))
            if floats["weight_norm"] == 0:
                floats["update_ratio"] = None
            stats = LayerStats(
                step=self._step, act_mean=floats["act_mean"], act_rms=floats["act_rms"], signal=floats["signal"],
                in_signal=floats["in_signal"], in_rms=floats["in_rms"], dead_frac=floats.get("dead_frac"),
                grad_out=floats.get("grad_out"), grad_in=floats.get("grad_in"), weight_rms=floats["weight_rms"],
                grad_rms=floats.get("grad_rms"), update_ratio=floats["update_ratio"],
                finite_act=bool(floats["finite_act"]),
                finite_grad=bool(floats.get("finite_grad", True)), finite_weight=bool(floats["finite_weight"]),
                in_mean=floats["in_mean"])
            self.history.stats.setdefault(name, []).append(stats)
            probe = hooks.probes.get(name)
            self.history.rectified[name] = probe is not None and is_rectifier(probe.act_module)
            if probe is not None and probe.act_module is not None:
                self.history.activations[name] = type(probe.act_module).__name__
        self.samples += 1
        if self._output is not None:
            numbers = torch.stack([v.float() for v in self._output.values()]).tolist()
            self.history.outputs.append(OutputStats(self._step, loss_value, **dict(zip(self._output, numbers))))
        self._pending, self._before, self._output = {}, {}, None
