"""Checks: small functions from a :class:`MonitorHistory` to :class:`Finding` s.

Each check judges general signals, relative ones where it can, so that the same thresholds
serve a TF model fed standardized images and a cuda-convnet model fed raw pixels:

* gains: how much of its input's image-to-image variation a layer passes on (forward), and
  how much of the gradient it receives it passes on to the layers below (backward). Fan-in
  scaled weights give gains of order 1 whatever the layer's size;
* the spread of a layer's outputs between images relative to their size (a layer whose output
  is the same for every image tells the layers above nothing);
* dead rectifier units, the update/weight ratio of each optimizer step, the loss trend and the
  confidence of the softmax; NaN/Inf with the first layer where it appeared.

The last weight layer (the one producing the logits) is exempt from the initialization and
gradient-flow checks: a small or zero classifier init is a deliberate, common choice, and it
learns its way out in a few steps because its inputs already differ between images.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .monitor import SATURATED_PROB, LayerStats, MonitorHistory

SEVERITIES = ("error", "warning", "info")

# A hidden layer that passes on less than 2% of the gradient it receives starves the layers below
# (healthy nets measured: 0.3 to 1.5 for hidden layers).
VANISHING_GAIN = 0.02
# ... or one that multiplies it by more than 20 makes them explode.
EXPLODING_GAIN = 20.0
# Initial forward gain far from 1 (fan-in scaling), relative to the input's scale: a layer fed
# inputs of RMS s may bring them down to unit scale (gain 1/s: cuda-convnet's conv1 takes raw
# pixels of RMS ~60 with initW 1e-4), but not far below, nor amplify them much beyond it;
# healthy hidden layers measured 0.2 to 1.5.
INIT_GAIN_LOW = 0.01
INIT_GAIN_HIGH = 10.0
# Outputs whose image-to-image spread is under 3% of their size are nearly constant.
CONSTANT_OUTPUT = 0.03
DEAD_UNITS = 0.5     # warn when half of a layer's rectifier units never fire on a batch
DEAD_LAYER = 0.95    # and call the layer dead beyond this
UPDATE_TOO_LARGE = 1.0   # a step that changes the weights by more than their size (or their fan-in scale)
UPDATE_TOO_SMALL = 1e-6  # a layer whose weights do not move
SATURATED_FRACTION = 0.5  # a softmax saturated on this share of the images, confidently wrong, is broken
MIN_LOSS_STEPS = 50      # steps needed before judging the loss trend (batch losses are noisy)
LOSS_TOLERANCE = 0.01    # a loss "decreases" when its last fifth is below its first fifth by this
LOSS_AT_CHANCE = 0.02    # ... and sits "at chance" within this of ln(classes)
LOSS_WINDOW = 500        # steps averaged at each end (long runs: the start of training vs now)
# Raw pixels: a first layer whose input has an RMS above 10, most of it a mean offset (0..255 images:
# mean ~120, RMS ~135), was not normalized; cuda-convnet's mean-subtracted raw pixels (mean ~4, RMS ~64)
# are its design and pass.
RAW_INPUT_MEAN_SHARE = 0.5
RAW_INPUT_RMS = 10.0
# A layer below a stack of saturating nonlinearities that gets under 1% of the gradient (relative to its
# weights) of the best-fed layer above it starves; under 0.1% its training is broken.
SATURATING = ("Sigmoid", "Tanh", "ScaledTanh", "Softsign", "Hardsigmoid", "LogSigmoid")
STARVING_RATIO = 1e-2
STARVED_RATIO = 1e-3
MIN_UNSEEN_IMAGES = 100  # images never trained on needed to call an accuracy "at chance"
MIN_FIT = 0.05           # labels check: the training loss must fall this much (memorizing)...
CARRIED_OVER = 0.0       # ... with none of the fall on unseen images (a slow start shows some: zero classifier)
TRAINED_LOSS_SHARE = 0.5  # a loss that starts under half of chance: a model trained before, not one that cannot learn
MIN_TRAIN_IMAGES = 500   # fewer training images: a few hundred steps memorize them, the run cannot be judged


@dataclass
class Finding:
    """One problem: ``layer`` (None for the whole model), a ``kind`` key, ``severity`` in
    error/warning/info, a plain-language ``message`` (what and why) and a ``fix``."""

    kind: str
    layer: str | None
    severity: str
    message: str
    fix: str
    step: int | None = None
    std: float | None = None  # init findings: the suggested weight std (the CLI turns it into a flag)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.layer)

    @property
    def is_problem(self) -> bool:
        return self.severity in ("error", "warning")

    def text(self) -> str:
        return f"{self.layer or 'model'}: {self.message} Fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(x: float) -> str:
    return f"{x:.2g}" if x != 0 else "0"


def _pct(x: float) -> str:
    if x >= 10:
        return f"{x:.2g} times"
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def _hidden(h: MonitorHistory) -> list[str]:
    """Weight layers that feed other weight layers (all but the logits layer)."""
    return [n for n in h.layers[:-1] if h.stats.get(n)]


def _below(h: MonitorHistory, layer: str) -> list[str]:
    return h.layers[:h.layers.index(layer)]


def _init_bounds(s: LayerStats) -> tuple[float, float]:
    scale = s.in_rms if s.in_rms > 0 else 1.0
    return INIT_GAIN_LOW * min(1.0, 1.0 / scale), INIT_GAIN_HIGH * max(1.0, 1.0 / scale)


def _is_dead(s: LayerStats) -> bool:
    return s.dead_frac is not None and s.dead_frac > DEAD_LAYER


def weak_init(h: MonitorHistory, layer: str) -> bool:
    """True when ``layer``'s initial forward gain is far below fan-in scaling for its input."""
    stats = h.stats.get(layer)
    if not stats or _is_dead(stats[0]):
        return False
    s = stats[0]
    return s.weight_rms == 0 or s.forward_gain < _init_bounds(s)[0]


def _weakness(h: MonitorHistory, layer: str) -> str:
    if h.stats[layer][0].weight_rms == 0:
        return "its weights are all zero"
    return "its weights are too small for its input"


def check_nonfinite(h: MonitorHistory) -> list[Finding]:
    """A non-finite loss (recorded with its layer), else the earliest non-finite layer statistics
    (a run that skips non-finite steps)."""
    event = h.nonfinite
    if event is not None:
        return [_nonfinite_finding(h, event.step, event.layer, event.where)]
    bad = [(s.step, i, name, s) for i, name in enumerate(h.layers) for s in h.stats.get(name, [])
           if not (s.finite_act and s.finite_grad and s.finite_weight)]
    if not bad:
        return []
    step, _, name, s = min(bad, key=lambda b: b[:2])
    where = "weights" if not s.finite_weight else "activations" if not s.finite_act else "gradients"
    return [_nonfinite_finding(h, step, name, where)]


def _nonfinite_finding(h: MonitorHistory, step: int, layer: str | None, where: str) -> Finding:
    ratios = [s.update_ratio for n in h.layers for s in h.stats.get(n, [])
              if s.update_ratio is not None and math.isfinite(s.update_ratio)]
    big = max(ratios, default=0.0)
    site = f"in {layer}'s {where}" if layer else "in the loss (every layer's activations were finite)"
    cause = (f" Just before, an optimizer step changed some weights by {_pct(big)} of their size: "
             "the learning rate is too high." if big > 0.1 else "")
    fix = ("lower the learning rate (--lr or --lr-scale, e.g. 10x lower); if it persists, look for "
           "an overflow in that layer (very large init or inputs).")
    return Finding("nonfinite", layer, "error", f"NaN/Inf first appeared at step {step} {site}.{cause}", fix, step)


def check_init_scale(h: MonitorHistory) -> list[Finding]:
    found = []
    for name in h.layers:
        if not h.stats.get(name):
            continue
        s = h.stats[name][0]
        if _is_dead(s) or (s.in_rms > 0 and s.in_signal / s.in_rms < CONSTANT_OUTPUT):
            continue  # dead, or its input hardly varies between images: no gain can be judged here
        lo, hi = _init_bounds(s)
        if name == h.layers[-1]:
            lo = 0.0  # a small (even zero) classifier init is a deliberate choice
        fan = h.fan_in.get(name, 0)
        scaling = f"1/sqrt({fan}) = {_fmt(1 / math.sqrt(fan))}" if fan else ""
        he = f"; fan-in scaling for unit-scale inputs is {scaling}" if fan else ""
        if s.weight_rms == 0 and lo > 0:
            found.append(Finding(
                "zero_init", name, "error",
                f"{name}'s weights are all zero at initialization: its outputs are the same for every image and "
                "it passes no gradient to the layers below.",
                f"initialize {name}'s weights randomly" + (f" (std about {scaling} for unit-scale inputs)."
                                                           if fan else "."), s.step))
        elif s.forward_gain < lo:
            good = s.weight_rms / max(s.forward_gain, 1e-12) * min(1.0, 1.0 / max(s.in_rms, 1e-12))
            found.append(Finding(
                "init_too_small", name, "warning",
                f"{name}'s initial weights (std {_fmt(s.weight_rms)}) are far below fan-in scaling for its input "
                f"(RMS {_fmt(s.in_rms)}): it passes on only {_pct(s.forward_gain)} of its input's variation "
                "between images.",
                f"initialize {name} with std about {_fmt(good)} (gain ~1 for this input{he}).", s.step, good))
        elif s.forward_gain > hi:
            good = s.weight_rms / s.forward_gain * max(1.0, 1.0 / max(s.in_rms, 1e-12))
            found.append(Finding(
                "init_too_large", name, "warning",
                f"{name}'s initial weights (std {_fmt(s.weight_rms)}) are far above fan-in scaling for its input "
                f"(RMS {_fmt(s.in_rms)}): it amplifies its input's variation {s.forward_gain:.0f}x.",
                f"initialize {name} with std about {_fmt(good)} (gain ~1 for this input{he}).", s.step, good))
    return found


def _episode(stats: list[LayerStats], bad: Callable[[LayerStats], bool]) -> tuple[LayerStats, LayerStats | None] | None:
    """(first sample where ``bad`` holds, first later sample where it no longer does) or None."""
    first = next((s for s in stats if bad(s)), None)
    if first is None:
        return None
    recovered = None
    for s in stats:
        if s.step > first.step:
            recovered = None if bad(s) else (recovered or s)
    return first, recovered


def _course(first: LayerStats, recovered: LayerStats | None, last: LayerStats) -> str:
    if recovered is not None:
        return f" (from step {first.step}; it recovered by step {recovered.step})"
    return f" (from step {first.step}, still at step {last.step})"


def check_gradient_flow(h: MonitorHistory) -> list[Finding]:
    found = []
    for name in _hidden(h)[1:] if h.layers else []:
        stats = h.stats[name]
        below = ", ".join(_below(h, name))

        def vanishing(s: LayerStats) -> bool:
            bg = s.backward_gain
            return bg is not None and bg < VANISHING_GAIN and not _is_dead(s)

        def exploding(s: LayerStats) -> bool:
            bg = s.backward_gain
            return bg is not None and bg > EXPLODING_GAIN

        episode = _episode(stats, vanishing)
        if episode:
            first, recovered = episode
            cause = (_weakness(h, name) if weak_init(h, name)
                     else "its weights or its rectifier units let little through")
            found.append(Finding(
                "vanishing_gradients", name, "warning",
                f"gradients vanish from {name} down: it passes on only {_pct(first.backward_gain)} of the gradient "
                f"it receives, so the layers below ({below}) barely learn{_course(first, recovered, stats[-1])}; "
                f"{cause}.",
                f"scale {name}'s init toward gain ~1 (fan-in scaling for its input); "
                "see the init finding if there is one.", first.step))
        episode = _episode(stats, exploding)
        if episode:
            first, recovered = episode
            found.append(Finding(
                "exploding_gradients", name, "warning",
                f"gradients explode from {name} down: it multiplies the gradient it receives by "
                f"{first.backward_gain:.0f}{_course(first, recovered, stats[-1])}, so the layers below ({below}) "
                "get oversized updates.",
                f"reduce {name}'s init std toward fan-in scaling, or lower the learning rate.", first.step))
    return found


def _init_margin(h: MonitorHistory, layer: str) -> float:
    """Initial forward gain over its lower bound (< 1: too weak for its input)."""
    s = h.stats[layer][0]
    return 0.0 if s.weight_rms == 0 else s.forward_gain / _init_bounds(s)[0]


def check_constant_outputs(h: MonitorHistory) -> list[Finding]:
    """The first layer (forward order) whose outputs hardly differ between images, blamed on the
    weakest layer up to it (relative to its input's scale)."""

    def constant(s: LayerStats) -> bool:
        return s.act_rms > 0 and s.signal / s.act_rms < CONSTANT_OUTPUT and not _is_dead(s)

    for i, name in enumerate(h.layers):
        stats = h.stats.get(name, [])
        episode = _episode(stats, constant)
        if not episode:
            continue
        first, recovered = episode
        candidates = [n for n in h.layers[:i + 1] if h.stats.get(n)]
        culprit = min(candidates, key=lambda n: _init_margin(h, n))
        if culprit == name:
            cause = f"{_weakness(h, name)}, so its biases dominate its outputs"
        else:
            cause = (f"its input varies too little next to its biases: {culprit}, upstream, is the weakest layer "
                     "for the scale of its input")
        above = "the layers above see" if name != h.layers[-1] else "the softmax sees"
        return [Finding(
            "constant_outputs", culprit, "warning",
            f"{name}'s outputs are nearly the same for every image: their spread between images is "
            f"{_pct(first.signal / first.act_rms)} of their size{_course(first, recovered, stats[-1])}, so {above} "
            f"an almost constant input and learn only a constant; {cause}.",
            f"initialize {culprit} with a larger std (fan-in scaling for its input).", first.step)]
    return []


def check_dead_units(h: MonitorHistory) -> list[Finding]:
    found = []
    for name in h.layers:
        stats = [s for s in h.stats.get(name, []) if s.dead_frac is not None]
        if not stats:
            continue
        worst = max(stats, key=lambda s: s.dead_frac)
        late = statistics.median(s.dead_frac for s in stats[len(stats) // 2:])
        fix = (f"initialize {name}'s biases at 0 or slightly positive, keep its init near fan-in scaling, "
               "and lower the learning rate if units die during training.")
        if worst.dead_frac > DEAD_LAYER:
            found.append(Finding(
                "dead_layer", name, "error",
                f"{name} is dead: {_pct(worst.dead_frac)} of its ReLU units output 0 for every image of the batch "
                f"(step {worst.step}), so it passes on no signal and no gradient.", fix, worst.step))
        elif late > DEAD_UNITS:
            found.append(Finding(
                "dead_units", name, "warning",
                f"{_pct(late)} of {name}'s ReLU units never fire on a batch in the second half of the run: "
                "they have died and no longer learn.", fix, stats[len(stats) // 2].step))
    return found


def check_updates(h: MonitorHistory) -> list[Finding]:
    """Optimizer steps that change weights by more than their size (too high a learning rate), and
    layers whose weights do not move. Layers with a too-small init are left to the init check:
    tiny weights make any sensible step look large."""
    found, too_large = [], []
    frozen = set(_never_updated(h)) | set(h.frozen)  # ... or frozen on purpose (requires_grad_(False))
    # layers that get a gradient: one that gets none (below a dead layer) does not move whatever the rate
    movers = [n for n in h.layers if not weak_init(h, n) and n not in frozen and _median_update(h, n) is not None
              and all(s.grad_rms for s in h.stats[n][1:] if s.grad_rms is not None)]
    for name in h.layers:
        if weak_init(h, name) or name in frozen:
            continue
        ratios = [(s.step, s.update_ratio) for s in h.stats.get(name, [])
                  if s.update_ratio is not None and math.isfinite(s.update_ratio)]
        # measured against at least the fan-in scale 1/sqrt(fan_in): a small init (a classifier's, say)
        # grows quickly in its first steps without anything being wrong
        scale = 1 / math.sqrt(h.fan_in[name]) if h.fan_in.get(name) else 0.0
        big = [(s.step, s.update_ratio * s.weight_rms / max(s.weight_rms, scale))
               for s in h.stats.get(name, []) if s.update_ratio is not None and math.isfinite(s.update_ratio)]
        big = [(step, r) for step, r in big if r > UPDATE_TOO_LARGE]
        if big:
            too_large.append((name, big[0][0], max(r for _, r in big)))
        later = [r for _, r in ratios[1:]]
        if len(later) >= 2 and statistics.median(later) < UPDATE_TOO_SMALL:
            found.append(Finding(
                "not_learning", name, "warning",
                f"{name}'s weights hardly move: each step changes them by {_fmt(statistics.median(later))} "
                "of their size (median).",
                f"raise {name}'s learning rate, or look for vanishing gradients above it.", ratios[1][0]))
    if movers and not too_large and all(_median_update(h, n) < UPDATE_TOO_SMALL for n in movers):
        largest = max(_median_update(h, n) for n in movers)
        factor = 10 ** max(1, math.ceil(math.log10(1e-3 / max(largest, 1e-12))))
        return [Finding(
            "learning_rate_too_low", None, "error",
            f"no layer's weights move: each optimizer step changes them by at most {_fmt(largest)} of their size "
            "(median per layer; healthy steps change weights by about 0.01%-1%), so the network learns nothing.",
            f"raise the learning rate about {factor:g}x (the optimizer's lr; --lr or --lr-scale for built-in models).",
            _first_step(h))]
    if too_large:
        worst = max(r for _, _, r in too_large)
        first = min(step for _, step, _ in too_large)
        factor = 10 ** max(1, math.ceil(math.log10(worst / 0.01)))
        names = ", ".join(n for n, _, _ in too_large)
        fix = (f"lower the learning rate about {factor:g}x (--lr or --lr-scale); healthy steps change weights by "
               "about 0.01%-1% of their size.")
        if len(too_large) >= max(2, len(h.layers) // 2):
            found.append(Finding("update_too_large", None, "error",
                                 f"optimizer steps change the weights of {names} by up to {_pct(worst)} of their "
                                 f"size (from step {first}): the learning rate is far too high.", fix, first))
        else:
            for name, step, r in too_large:
                found.append(Finding("update_too_large", name, "warning",
                                     f"an optimizer step changes {name}'s weights by {_pct(r)} of their size "
                                     f"(step {step}): its learning rate is far too high.", fix, step))
    return found


def _median_update(h: MonitorHistory, layer: str) -> float | None:
    """Median update/weight ratio of a layer after its first step (None: too few samples)."""
    ratios = [s.update_ratio for s in h.stats.get(layer, [])[1:]
              if s.update_ratio is not None and math.isfinite(s.update_ratio)]
    return statistics.median(ratios) if len(ratios) >= 2 else None


def _first_step(h: MonitorHistory) -> int | None:
    steps = h.monitored_steps
    return steps[0] if steps else None


def _never_updated(h: MonitorHistory) -> list[str]:
    """Layers that get weight gradients but whose weights never change (left out of the optimizer)."""
    frozen = []
    for name in h.layers:
        stats = [s for s in h.stats.get(name, []) if s.update_ratio is not None]
        if name in h.not_in_optimizer or (len(stats) >= 2 and all(
                s.update_ratio == 0.0 and s.grad_rms is not None and s.grad_rms > 0 for s in stats)):
            frozen.append(name)
    return frozen


def check_optimizer_coverage(h: MonitorHistory) -> list[Finding]:
    """Layers that receive gradients that the optimizer never applies."""
    return [Finding(
        "not_in_optimizer", name, "error",
        f"{name} gets gradients but its weights never change: "
        + ("its parameters are not in the optimizer" if name in h.not_in_optimizer else
           "the optimizer does not update them (left out of it, or a learning rate of 0)")
        + ", so it keeps its random initial weights.",
        f"give the optimizer all of the model's parameters, e.g. torch.optim.SGD(model.parameters(), ...), "
        f"including {name}'s; freeze a layer on purpose with requires_grad_(False).", _first_step(h))
        for name in _never_updated(h)]


def check_softmax_before_loss(h: MonitorHistory) -> list[Finding]:
    """Probabilities fed to a loss that applies a softmax itself (the tutorial's exercise 1 trap)."""
    if not (h.expects_logits and h.probabilities_out):
        return []
    where = (f"the model's {h.softmax_module} module" if h.softmax_module else
             f"a softmax after {h.layers[-1]}" if h.layers else "a softmax in the model")
    # named at the nn.Softmax module; a functional softmax at the layer whose outputs it squeezes
    layer = h.softmax_module or (h.layers[-1] if h.layers else None)
    return [Finding(
        "softmax_before_loss", layer, "error",
        f"the model's outputs are already probabilities ({where}), but the loss (cross-entropy) applies a softmax "
        "itself: a double softmax squeezes the outputs into 0..1, so the loss can hardly move from chance and its "
        "gradients are tiny.",
        "return the logits (remove the softmax from the model's forward) and apply the softmax only for "
        "predictions; or keep log-probabilities (log_softmax) with nll_loss.", _first_step(h))]


def check_inputs(h: MonitorHistory) -> list[Finding]:
    """Raw 0..255 pixels (or any input far from zero mean, unit scale) fed to the first layer."""
    if not h.layers or not h.stats.get(h.layers[0]):
        return []
    name = h.layers[0]
    s = h.stats[name][0]
    if not (s.in_rms > RAW_INPUT_RMS and s.in_mean > RAW_INPUT_MEAN_SHARE * s.in_rms):
        return []
    return [Finding(
        "unnormalized_inputs", name, "warning",
        f"{name}'s inputs are not normalized: mean {s.in_mean:.3g}, RMS {s.in_rms:.3g} (raw 0..255 pixels?); "
        "activations and gradients come out hundreds of times too large, so steps overshoot.",
        "normalize the inputs: divide pixels by 255 and subtract the mean / divide by the std per channel "
        "(torchvision.transforms.Normalize), the same way for training and evaluation.", s.step)]


def check_saturating_stack(h: MonitorHistory) -> list[Finding]:
    """Layers starved of gradient below a stack of sigmoid/tanh layers (each shrinks the gradient),
    named at the layers that starve."""
    feed: dict[str, float] = {}
    for name in h.layers:
        values = [s.grad_rms / max(s.weight_rms, 1 / math.sqrt(h.fan_in.get(name) or 1))
                  for s in h.stats.get(name, []) if s.grad_rms is not None and math.isfinite(s.grad_rms)]
        if values:
            feed[name] = statistics.median(values)
    found = []
    for i, name in enumerate(h.layers[:-1]):
        above = [n for n in h.layers[i + 1:] if n in feed]
        saturating = [n for n in h.layers[i:-1] if h.activations.get(n) in SATURATING]
        if name not in feed or not above or len(saturating) < 2:
            continue
        best = max(above, key=lambda n: feed[n])
        ratio = feed[name] / feed[best] if feed[best] > 0 else 1.0
        if ratio >= STARVING_RATIO:
            continue
        kinds = "/".join(sorted({h.activations[n].lower() for n in saturating}))
        found.append(Finding(
            "vanishing_gradients", name, "error" if ratio < STARVED_RATIO else "warning",
            f"{name} starves: it gets {_pct(ratio)} of the gradient (relative to its weights) that {best} gets, "
            f"because the gradient crosses {len(saturating)} saturating {kinds} layers on its way down and each "
            "multiplies it by their slope (a sigmoid's is at most 0.25), so it barely learns.",
            f"use ReLU (nn.ReLU) instead of {kinds} in the hidden layers, or add normalization (nn.BatchNorm1d/2d) "
            "or residual connections; with tanh, at least Xavier init (nn.init.xavier_normal_).",
            _first_step(h)))
    return found


def check_labels(h: MonitorHistory) -> list[Finding]:
    """The network fits its training batches, yet nothing of it carries over to images it never trained
    on (accuracy at chance, loss not lower): the labels do not belong to their inputs (shuffled, misaligned)."""
    if h.unseen is None or h.unseen_loss is None or h.unseen[1] < MIN_UNSEEN_IMAGES \
            or len(h.losses) < MIN_LOSS_STEPS:
        return []
    correct, n = h.unseen
    chance = 1 / h.num_classes
    accuracy = correct / n
    if _above_chance(h):
        return []
    k = min(LOSS_WINDOW, max(5, len(h.losses) // 5))
    head = [x for _, x in h.losses[:k] if math.isfinite(x)]
    tail = [x for _, x in h.losses[-k:] if math.isfinite(x)]
    if len(head) < 2 or len(tail) < 2:
        return []
    m_head, m_tail = statistics.fmean(head), statistics.fmean(tail)
    se = math.sqrt(statistics.pvariance(head) / len(head) + statistics.pvariance(tail) / len(tail))
    if m_tail > m_head - max(MIN_FIT, 3 * se):
        return []  # nothing learned at all, not even by heart: the loss check says so
    carried = (m_head - h.unseen_loss) / (m_head - m_tail)  # share of the training loss's fall seen on new images
    if carried > CARRIED_OVER:
        return []  # learning that generalizes, only slowly (a zero-initialized classifier, say)
    return [Finding(
        "labels_mismatch", None, "error",
        f"the network fits its training batches (loss {m_head:.3f} -> {m_tail:.3f}) but not images it never "
        f"trained on (loss {h.unseen_loss:.3f}, accuracy {100 * accuracy:.1f}% of {n}, chance {100 * chance:.0f}%): "
        "it memorizes, as when the labels do not belong to their inputs (shuffled separately, off by one, or in "
        "another order than the images).",
        "check that each label goes with its image (look at a few images with their labels); shuffle images and "
        "labels with one permutation (x[idx], y[idx]), never separately.", h.losses[-1][0])]


def check_data_size(h: MonitorHistory) -> list[Finding]:
    """Too few training images to tell learning from memorizing: never call such a run healthy."""
    if h.trained_on is None or h.trained_on >= MIN_TRAIN_IMAGES:
        return []
    return [Finding(
        "too_little_data", None, "warning",
        f"trained on only {h.trained_on} images: a few hundred steps go over each of them many times, so a "
        "falling loss may be memorizing and the held-out accuracy is too noisy; the doctor cannot judge this run.",
        f"give the doctor at least {MIN_TRAIN_IMAGES} training images (more data, or a larger --limit-train); "
        "it holds out a fifth of them (at most --val-images).", None)]


def _above_chance(h: MonitorHistory) -> bool:
    """The accuracy on images the model never trained on is clearly (3 standard errors) above chance."""
    if h.unseen is None or h.unseen[1] < MIN_UNSEEN_IMAGES:
        return False
    correct, n = h.unseen
    chance = 1 / h.num_classes
    return correct / n > chance + 3 * math.sqrt(chance * (1 - chance) / n)


def check_loss(h: MonitorHistory, min_steps: int = MIN_LOSS_STEPS) -> list[Finding]:
    """The cross-entropy of the first and the last fifth of the steps (at most LOSS_WINDOW each):
    not lower at the end (or at chance level), or clearly higher."""
    if len(h.losses) < min_steps:
        return []
    k = min(LOSS_WINDOW, max(5, len(h.losses) // 5))
    first = [(step, x) for step, x in h.losses[:k] if math.isfinite(x)]
    last = [(step, x) for step, x in h.losses[-k:] if math.isfinite(x)]
    if len(first) < 2 or len(last) < 2:
        return []
    head, tail = [x for _, x in first], [x for _, x in last]
    m_head, m_tail = statistics.fmean(head), statistics.fmean(tail)
    se = math.sqrt(statistics.pvariance(head) / len(head) + statistics.pvariance(tail) / len(tail))
    chance = math.log(h.num_classes)
    steps = f"steps {first[0][0]}-{first[-1][0]} vs {last[0][0]}-{last[-1][0]}"
    if m_tail > m_head + max(0.1, 3 * se):
        return [Finding("loss_increasing", None, "warning",
                        f"the loss rises: {m_head:.3f} -> {m_tail:.3f} ({steps}); training is diverging.",
                        "lower the learning rate.", last[0][0])]
    at_chance = abs(m_tail - chance) < LOSS_AT_CHANCE
    if m_tail > m_head - LOSS_TOLERANCE or (at_chance and m_head - m_tail < 2 * se):
        if m_head < TRAINED_LOSS_SHARE * chance and _above_chance(h):  # trained before (or converged)
            return [Finding("already_trained", None, "info",
                            f"the loss holds at {m_tail:.3f}, far below chance ({chance:.2f}): the model was already "
                            f"trained (or has converged) ({steps}).",
                            "nothing to fix; to judge how it learns, run the doctor on a freshly initialized model.",
                            last[0][0])]
        what = (f"the loss is stuck at chance level, ln({h.num_classes}) = {chance:.2f}: the network predicts "
                "the same for every image" if at_chance else "the loss does not decrease")
        return [Finding("loss_not_decreasing", None, "warning",
                        f"{what} ({m_head:.3f} -> {m_tail:.3f}, {steps}).",
                        "see the layer findings; with none, raise the learning rate or train longer.",
                        last[0][0])]
    return []


def check_softmax(h: MonitorHistory) -> list[Finding]:
    if not h.expects_logits:
        return []  # not a cross-entropy (a regression's MSE, say): its outputs are no softmax's logits
    chance = math.log(h.num_classes)
    saturated = [o for o in h.outputs if o.saturated_frac > SATURATED_FRACTION and o.loss > chance]
    if not saturated:
        return []
    o = saturated[0]
    return [Finding(
        "softmax_saturated", h.layers[-1] if h.layers else None, "warning",
        f"the softmax is saturated at step {o.step}: {_pct(o.saturated_frac)} of the images get a top probability "
        f"above {SATURATED_PROB}, yet the loss is {o.loss:.3g} (chance: {chance:.2f}), so they are confidently "
        f"wrong; the logits are too large (spread {o.logit_std:.3g}), so their gradients vanish or explode.",
        "scale down the last layer's init (about 1/sqrt(fan-in) or smaller) or lower the learning rate.", o.step)]


CHECKS: list[Callable[[MonitorHistory], list[Finding]]] = [
    check_nonfinite, check_init_scale, check_gradient_flow, check_constant_outputs, check_dead_units,
    check_updates, check_softmax, check_optimizer_coverage, check_softmax_before_loss, check_inputs,
    check_saturating_stack, check_data_size,
]


# What a blow-up (a far too large step, NaN) leaves behind: reported as its consequences.
AFTERMATH = {
    "dead_layer": "{layer} died", "dead_units": "units of {layer} died",
    "vanishing_gradients": "gradients vanished at {layer}", "exploding_gradients": "gradients exploded at {layer}",
    "constant_outputs": "outputs became constant", "softmax_saturated": "the softmax saturated",
    "not_learning": "{layer} stopped learning", "loss_not_decreasing": "the loss stopped decreasing",
    "loss_increasing": "the loss rose",
}
MODEL_CAUSES = ("softmax_before_loss", "labels_mismatch", "learning_rate_too_low")
STARVING = ("dead_layer", "vanishing_gradients", "zero_init", "init_too_small", "softmax_saturated")


def explain(findings: list[Finding], history: MonitorHistory) -> list[Finding]:
    """Fold findings that are consequences of another into it: what follows a blow-up, layers that
    stop learning below a dead or starving layer, constant outputs behind a dead layer."""
    order = {name: i for i, name in enumerate(history.layers)}
    blowups = [f for f in findings if f.kind in ("update_too_large", "nonfinite") and f.step is not None]
    kept = list(findings)
    if blowups:
        root = min(blowups, key=lambda f: f.step)
        aftermath = [f for f in kept if f.kind in AFTERMATH and f.step is not None and f.step > root.step]
        if aftermath:
            labels = list(dict.fromkeys(AFTERMATH[f.kind].format(layer=f.layer or "the model") for f in aftermath))
            root.message += f" Then {', '.join(labels)}."
            kept = [f for f in kept if f not in aftermath]
    dead = [f for f in kept if f.kind == "dead_layer"]
    if dead:  # a dead layer passes nothing either way: constant outputs above it, no learning anywhere
        kept = [f for f in kept if not (f.kind == "not_learning" or (
            f.kind == "constant_outputs" and f.step is not None and f.step >= min(d.step or 0 for d in dead)))]
    starving = [order[f.layer] for f in kept if f.kind in STARVING and f.layer in order]
    if starving:
        top = max(starving)
        kept = [f for f in kept if not (f.kind == "not_learning" and order.get(f.layer, len(order)) < top)]
    if any(f.kind in MODEL_CAUSES for f in kept):  # a stalled loss is what these causes do
        kept = [f for f in kept if f.kind != "loss_not_decreasing"]
    if any(f.kind == "softmax_before_loss" for f in kept) and history.layers:  # squeezed outputs: its doing
        kept = [f for f in kept if not (f.kind in ("constant_outputs", "softmax_saturated")
                                        and f.layer == history.layers[-1])]
    for f in kept:  # an init far too large is the cause of a blow-up that follows it
        if f.kind == "init_too_large" and blowups:
            f.severity = "error"
            f.message += " The steps that follow blow up (below)."
    for f in kept:  # raw inputs are the cause when training broke
        if f.kind == "unnormalized_inputs" and any(
                g.severity == "error" or g.kind.startswith("loss_") for g in kept if g is not f):
            f.severity = "error"
    return kept


def run_checks(history: MonitorHistory, min_loss_steps: int = MIN_LOSS_STEPS) -> list[Finding]:
    """All findings, most severe first, then in forward order of their layers.

    ``min_loss_steps``: the loss trend is judged only after this many steps.
    """
    findings = [f for check in CHECKS for f in check(history)] + check_loss(history, min_loss_steps)
    if not any(f.is_problem and f.kind != "loss_not_decreasing" for f in findings):  # else: that is the cause
        findings += check_labels(history)
    findings = explain(findings, history)
    order = {name: i for i, name in enumerate(history.layers)}
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), order.get(f.layer, len(order))))
