"""Ctrl-C (SIGINT) and SIGTERM in ``localconv train`` outside the training loop.

``Trainer.fit`` installs its own handler for the loop (finish the step, checkpoint, stop). Around it:

* **before training starts** (reading and decoding the data, building the model, joining the process group)
  there is nothing to save: one line and exit 130 / 143, not a traceback nor a silent exit (the default
  SIGTERM action). Cache files are written atomically and the run folder is created only just before
  training, and removed again if no checkpoint was written, so nothing half-made is left for ``--resume``;
* **from the call of fit() on** the signal goes to the trainer's handler, also after fit() has restored this
  one: under torchrun the elastic agent SIGTERMs the surviving workers as soon as one dies, and rank 0, still
  turning the failed collective into its one-line message, must not be ended by the default action before
  it says it. The trainer's handler ignores a signal once its loop has ended (the checkpoint records why).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, "FrameType | None"], None]


class StoppedBeforeTraining(BaseException):
    """A SIGINT or SIGTERM before the training loop started (a BaseException, as KeyboardInterrupt is: data
    readers that catch Exception must not take it for a damaged file)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by the signal: 130, 143

    def __str__(self) -> str:
        what = "terminated (SIGTERM)" if self.signum == signal.SIGTERM else "interrupted"
        return f"{what} before training started: nothing to save; run the same command again"


class TrainSignals:
    """Installed for the whole ``train`` command (a context manager; main thread only, as signal handlers are)."""

    def __init__(self) -> None:
        self._delegate: Handler | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> TrainSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def hand_to(self, handler: Handler) -> None:
        """From now on a signal goes to ``handler`` (the trainer's), also after fit() restores this one."""
        self._delegate = handler

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._delegate is not None:
            self._delegate(signum, frame)
            return
        raise StoppedBeforeTraining(signum)
