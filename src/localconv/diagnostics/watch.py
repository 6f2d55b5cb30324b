"""``localconv train --watch``: the doctor's monitor and checks running inside a real training run.

:class:`WatchCallback` reviews the monitor's history each time it records a step; every new
problem is printed once, in the doctor's wording, and with ``stop_on_problem`` the run stops
cleanly (a checkpoint is written) at the first one.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..training.callbacks import Callback
from .checks import Finding, run_checks
from .monitor import LayerMonitor

if TYPE_CHECKING:
    from ..training.engine import Trainer

# Judge the loss trend only after this many steps: warm-up schedules hold it still at first.
WATCH_MIN_LOSS_STEPS = 200


def _write_stderr(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


class WatchCallback(Callback):
    """Warn once per problem the checks find during training; optionally stop the run."""

    def __init__(self, every: int = 50, stop_on_problem: bool = False,
                 write: Callable[[str], None] | None = None) -> None:
        self.monitor = LayerMonitor(every=every, dense_start=10)
        self.stop_on_problem = stop_on_problem
        self.write = write or _write_stderr
        self.warned: list[Finding] = []
        self._seen: set[tuple[str, str | None]] = set()
        self._samples = 0

    def on_train_start(self, trainer: "Trainer") -> None:
        self.monitor.on_train_start(trainer)

    def after_backward(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        had_event = self.monitor.history.nonfinite is not None
        self.monitor.after_backward(trainer, loss)
        if not had_event and self.monitor.history.nonfinite is not None:
            self.review(trainer)  # the engine stops right after this on a non-finite loss

    def after_step(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        self.monitor.after_step(trainer, loss)
        samples = self.monitor.samples
        if samples != self._samples:
            self._samples = samples
            self.review(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        self.review(trainer)
        self.monitor.on_train_end(trainer)

    def review(self, trainer: "Trainer | None" = None) -> list[Finding]:
        """Run the checks on what was seen so far; warn about (and return) the new problems."""
        min_steps = max(WATCH_MIN_LOSS_STEPS, getattr(trainer, "steps_per_epoch", 0) or 0)
        new = [f for f in run_checks(self.monitor.history, min_loss_steps=min_steps)
               if f.is_problem and f.key not in self._seen]
        for f in new:
            self._seen.add(f.key)
            self.warned.append(f)
            self.write(f"watch: {f.severity}: {f.text()}")
        if new and self.stop_on_problem and trainer is not None and not trainer.should_stop:
            trainer.should_stop = True
            trainer.stop_reason = f"problem: {new[0].kind}" + (f" in {new[0].layer}" if new[0].layer else "")
        return new

    def close(self) -> None:
        """Remove the hooks (also when training ended with an exception)."""
        self.monitor.detach()
