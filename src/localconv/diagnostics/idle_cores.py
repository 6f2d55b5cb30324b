"""How many CPU threads a short run should use: one per core that other processes leave idle.

Measured on the 2-core project machine (tf-tutorial doctor run, batches of 32): on a quiet machine torch's
two threads took 5.6 s of wall time against 9.8 s with one; on a busy one (load ~6) two threads spent 61 s
of CPU against 11.5 s with one, because each thread spins while it waits for the other to be scheduled.
So the count is decided by what the other processes use, measured over a window this process spends
on other work (loading the data): the machine's busy time (``/proc/stat``) minus this process's own.
"""
from __future__ import annotations

import os
import resource
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU seconds all processes have used since boot (Linux), or None where /proc/stat is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class IdleCores:
    """Start a measurement at construction; :meth:`threads` gives the thread count at its end."""

    def __init__(self) -> None:
        self._busy, self._own, self._wall = _machine_busy_s(), _own_cpu_s(), time.monotonic()

    def others_cores(self) -> float | None:
        """Cores' worth of CPU that other processes used since construction (None: unknown)."""
        busy, wall = _machine_busy_s(), time.monotonic() - self._wall
        if busy is None or self._busy is None or wall < 0.05:
            return None
        own = _own_cpu_s() - self._own
        return max(0.0, (busy - self._busy - own) / wall)

    def threads(self, available: int) -> int:
        """``available`` threads (torch's default) less the cores other processes kept busy, at least 1;
        ``available`` when that cannot be measured."""
        others = self.others_cores()
        if others is None:
            return available
        return max(1, min(available, round(available - others)))
