"""Run the ``localconv`` command line as a user does: a fresh process, a given number of threads, timed.

Shared by the benchmarks that measure whole commands (``cpu_accuracy.py``, ``train_throughput.py``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time


def run_localconv(*args: str, threads: int) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m localconv ARGS`` with ``OMP_NUM_THREADS=threads``: the finished process (output captured)
    and its wall seconds; a failure raises with the command and the end of its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "localconv", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"localconv {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done, seconds
