"""Learning-rate schedules as a multiplier of each group's base rate, a function of the global step."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LocalconvError


@dataclass(frozen=True)
class Phase:
    epochs: float
    multiplier: float


def parse_schedule(text: str) -> list[Phase]:
    """``"350:1,150:1,10:0.1,10:0.01"`` -> phases of (epochs, epsW multiplier)."""
    phases = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        try:
            epochs_s, mult_s = part.split(":")
            phase = Phase(float(epochs_s), float(mult_s))
        except ValueError:
            raise LocalconvError(f"--schedule: phase {i + 1} {part!r} is not EPOCHS:MULTIPLIER") from None
        if not (phase.epochs > 0 and math.isfinite(phase.epochs)) or not (phase.multiplier >= 0 and math.isfinite(phase.multiplier)):
            raise LocalconvError(f"--schedule: phase {i + 1} {part!r} needs epochs > 0 and multiplier >= 0")
        phases.append(phase)
    if not phases:
        raise LocalconvError("--schedule is empty")
    return phases


@dataclass(frozen=True)
class EpochClock:
    """Global step <-> epoch when the first ``first_epochs`` epochs pass over a smaller training set.

    cuda-convnet's methodology trains phase 1 on batches 1-4 (``first_steps_per_epoch`` steps an epoch), then
    on all five (``steps_per_epoch``). Without a first phase (``first_steps_per_epoch`` 0) this is plain
    ``epoch = step / steps_per_epoch``. Epoch indices (which seed each epoch's plan) keep counting across the
    switch, so every epoch draws its own shuffle and augmentation.
    """

    steps_per_epoch: int
    first_steps_per_epoch: int = 0
    first_epochs: float = 0.0

    @property
    def first_steps(self) -> int:
        return round(self.first_epochs * self.first_steps_per_epoch)

    def step_at(self, epoch: float) -> int:
        """The global step at which ``epoch`` epochs are done."""
        if self.first_steps_per_epoch and epoch <= self.first_epochs:
            return round(epoch * self.first_steps_per_epoch)
        return self.first_steps + round((epoch - self.first_epochs) * self.steps_per_epoch)

    def epoch_at(self, step: int) -> float:
        if self.first_steps_per_epoch and step <= self.first_steps:
            return step / self.first_steps_per_epoch
        return self.first_epochs + (step - self.first_steps) / self.steps_per_epoch

    def in_first_phase(self, step: int) -> bool:
        """Whether the step after ``step`` steps trains on the smaller set."""
        return bool(self.first_steps_per_epoch) and step < self.first_steps

    def locate(self, step: int) -> tuple[int, int, int]:
        """(epoch index, step within that epoch, steps in that epoch) of the step after ``step`` steps."""
        if self.in_first_phase(step):
            epoch, k = divmod(step, self.first_steps_per_epoch)
            return epoch, k, self.first_steps_per_epoch
        done = -(-self.first_steps // self.first_steps_per_epoch) if self.first_steps_per_epoch else 0
        epoch, k = divmod(step - self.first_steps, self.steps_per_epoch)
        return done + epoch, k, self.steps_per_epoch

    def at_epoch_end(self, step: int) -> bool:
        if self.first_steps_per_epoch and step <= self.first_steps:
            return step % self.first_steps_per_epoch == 0 or step == self.first_steps
        return (step - self.first_steps) % self.steps_per_epoch == 0


class Schedule:
    """Base: constant multiplier 1."""

    def multiplier(self, step: int) -> float:
        return 1.0


class PhaseSchedule(Schedule):
    """cuda-convnet style: piecewise constant phases, lengths in epochs, scaled to ``total_epochs``.

    When the run is shorter (or longer) than the phases add up to, every phase is scaled by the
    same factor, so a shortened run keeps the shape of the published procedure.
    """

    def __init__(self, phases: list[Phase], steps_per_epoch: int, total_epochs: float | None = None,
                 clock: EpochClock | None = None) -> None:
        length = sum(p.epochs for p in phases)
        scale = (total_epochs / length) if total_epochs else 1.0
        clock = clock or EpochClock(steps_per_epoch)  # epochs of different sizes (a held-out first phase)
        self.bounds: list[tuple[int, float]] = []
        end = 0.0
        for p in phases:
            end += p.epochs * scale
            self.bounds.append((clock.step_at(end), p.multiplier))

    def multiplier(self, step: int) -> float:
        for end, mult in self.bounds:
            if step < end:
                return mult
        return self.bounds[-1][1]


class StaircaseDecay(Schedule):
    """TF ``exponential_decay(staircase=True)``: times ``factor`` every ``decay_steps``."""

    def __init__(self, decay_steps: int, factor: float = 0.1) -> None:
        self.decay_steps, self.factor = max(1, decay_steps), factor

    def multiplier(self, step: int) -> float:
        return self.factor ** (step // self.decay_steps)


class WarmupLinearDecay(Schedule):
    """Linear warm-up to 1 then linear decay to ``final`` (modern fast-training schedule)."""

    def __init__(self, total_steps: int, warmup_steps: int, final: float = 0.0) -> None:
        self.total, self.warmup, self.final = max(1, total_steps), max(0, warmup_steps), final

    def multiplier(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(self.final, 1.0 - (1.0 - self.final) * frac)
