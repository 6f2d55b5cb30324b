"""``localconv train --watch``: the doctor's monitor and checks running inside a real training run.

:class:`WatchCallback` reviews the monitor's history each time it records a step; every new
problem is printed once, in the doctor's wording, and with ``stop_on_problem`` the run stops
cleanly (a checkpoint is written) at the first one.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from .checks import Finding, run_checks
from .monitor import LayerMonitor

# Judge the loss trend only after this many steps: warm-up schedules hold it still at first.
WATCH_MIN_LOSS_STEPS = 200


def _write_stderr(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


class WatchCallback:
    """Warn once per problem the checks find during training; optionally stop the run.

    The methods of :class:`localconv.training.callbacks.Callback`, duck-typed (diagnostics never import
    training)."""

    def __init__(self, every: int = 50, stop_on_problem: bool = False,
                 write: Callable[[str], None] | None = None) -> None:
        self.monitor = LayerMonitor(every=every, dense_start=10)
        self.stop_on_problem = stop_on_problem
        self.write = write or _write_stderr
        self.warned: list[Finding] = []
        self._seen: set[tuple[str, str | None]] = set()
        self._samples = 0

    def on_train_start(self, trainer: Any) -> None:
        self.monitor.on_train_start(trainer)

    def after_backward(self, trainer: Any, loss: torch.Tensor) -> None:
        had_event = self.monitor.history.nonfinite is not None
        self.monitor.after_backward(trainer, loss)
        if not had_event and self.monitor.history.nonfinite is not None:
            self.review(trainer)  # the engine stops right after this on a non-finite loss

    def after_step(self, trainer: Any, loss: torch.Tensor) -> None:
        self.monitor.after_step(trainer, loss)
        samples = self.monitor.samples
        if samples != self._samples:
            self._samples = samples
            self.review(trainer)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Any) -> None:
        self.review(trainer)
        self.monitor.on_train_end(trainer)

    def review(self, trainer: Any = None) -> list[Finding]:
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


class Watch:
    """The doctor inside your own training loop: a context manager that watches every layer that owns
    weights and removes its hooks on exit. It changes nothing in the training (same losses, same
    weights)::

        with localconv.Watch(model, every=10) as w:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                w.after_backward(loss, y)   # y: optional, for the accuracy of each batch before its step
                optimizer.step()
                w.after_step()
        print(w.report())

    ``every``: record layer statistics one step in ``every`` (and each of the first ``dense_start``);
    the NaN/Inf tracking and the loss are recorded every step. ``expects_logits``: the loss applies a
    softmax itself (cross-entropy), so probabilities coming out of the model are a bug.
    """

    def __init__(self, model: torch.nn.Module, every: int = 10, *, expects_logits: bool = True,
                 dense_start: int = 10) -> None:
        self.model = model
        self.monitor = LayerMonitor(every=every, dense_start=dense_start)
        self.monitor.history.expects_logits = expects_logits

    def __enter__(self) -> "Watch":
        self.monitor.attach(self.model, self.monitor.step)
        return self

    def __exit__(self, *exc: object) -> None:
        self.monitor.detach()

    def after_backward(self, loss: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Call after ``loss.backward()``, before ``optimizer.step()``."""
        if self.monitor.hooks is not None and self.monitor._loss is not None:
            raise RuntimeError("Watch: after_backward called twice without after_step: call w.after_step() after "
                               "each optimizer.step(), or the steps are not recorded")
        self.monitor.observe_backward(loss, targets=targets)

    def after_step(self) -> None:
        """Call after ``optimizer.step()``."""
        self.monitor.observe_step()

    @property
    def history(self) -> Any:
        return self.monitor.history

    def report(self, model_name: str | None = None) -> Any:
        """The doctor's :class:`~localconv.diagnostics.report.DoctorReport` on what was seen so far."""
        from .report import DoctorReport

        history = self.monitor.history
        return DoctorReport(model_name or type(self.model).__name__, history, run_checks(history),
                            steps_run=len(history.losses))
