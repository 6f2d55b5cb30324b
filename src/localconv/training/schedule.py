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


class Schedule:
    """Base: constant multiplier 1."""

    def multiplier(self, step: int) -> float:
        return 1.0


class PhaseSchedule(Schedule):
    """cuda-convnet style: piecewise constant phases, lengths in epochs, scaled to ``total_epochs``.

    When the run is shorter (or longer) than the phases add up to, every phase is scaled by the
    same factor, so a shortened run keeps the shape of the published procedure.
    """

    def __init__(self, phases: list[Phase], steps_per_epoch: int, total_epochs: float | None = None) -> None:
        length = sum(p.epochs for p in phases)
        scale = (total_epochs / length) if total_epochs else 1.0
        self.bounds: list[tuple[int, float]] = []
        end = 0.0
        for p in phases:
            end += p.epochs * scale
            self.bounds.append((round(end * steps_per_epoch), p.multiplier))

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
