"""Training progress for a log file: plain lines instead of a progress bar when stderr is not a terminal.

A tqdm bar redraws itself with carriage returns and cursor escapes; in ``train ... > log 2>&1`` every redraw
becomes a frame of the file. When stderr is not a terminal, the trainer shows no bar: it prints one line per
epoch (the engine's epoch line) and, on epochs long enough to need it, a plain step line every
:data:`STEP_LINE_SECONDS` seconds, like ``eval``, which shows no bar in a log either.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

# Seconds between two step lines in a log: a long epoch still shows that the run is alive, a short one
# prints only its epoch line.
STEP_LINE_SECONDS = 30.0


def stderr_is_terminal() -> bool:
    """Whether progress bars can be drawn: stderr is an interactive terminal (not a file, pipe or capture)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


class PlainProgress:
    """Step lines ``step S/T (epoch E): k v, ...`` on ``stream`` (default stderr), at most one every
    ``every_s`` seconds; does nothing when not ``enabled``."""

    def __init__(self, total_steps: int, enabled: bool, every_s: float | None = None,
                 stream: TextIO | None = None) -> None:
        self.total_steps = total_steps
        self.enabled = enabled
        self.every_s = STEP_LINE_SECONDS if every_s is None else every_s
        self.stream = stream
        self._last = time.monotonic()

    def restart(self) -> None:
        """Count the interval from now (after an epoch line: no step line right behind it)."""
        self._last = time.monotonic()

    def step(self, step: int, epoch: float, values: dict[str, str]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        shown = ", ".join(f"{key} {value}" for key, value in values.items())
        print(f"step {step}/{self.total_steps} (epoch {epoch:.2f}): {shown}", file=self.stream or sys.stderr,
              flush=True)
