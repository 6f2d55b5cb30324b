"""Time of a ``localconv doctor`` diagnosis, whole and by phase (issue 13's target: at most 15 s for
tf-tutorial on the 2-core CPU machine).

    python benchmarks/doctor_time.py --data ../shared/datasets/cifar10-jpeg [--runs 2] [--threads 0] [--json]

1. The command as a user runs it (``python -m localconv doctor --model tf-tutorial --conv2-std 1e-4``), as a
   subprocess: once with an empty decoded-image cache (``cold``: the JPEG archives are decoded) and ``--runs``
   times with that cache filled (``warm``). Wall seconds each, and the exit code (1 = the problem was named).
2. The same work by phase, in this process: importing localconv's CLI and torch, loading the data (cold and
   warm cache), building the model, the watched training run (:func:`run_doctor`) and formatting the report;
   wall and CPU seconds of each (CPU > wall: several threads; CPU << wall: the machine is busy).

``--threads N`` sets ``OMP_NUM_THREADS``/torch threads for both parts (0: torch's default). Measure on a quiet
machine: on a shared one the figures say little.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOCTOR_ARGS = ["doctor", "--model", "tf-tutorial", "--conv2-std", "1e-4", "--device", "cpu"]


def whole_command(data: str, runs: int, env: dict[str, str]) -> dict[str, Any]:
    """Wall seconds of the CLI with a cold, then a warm decoded-image cache."""
    out: dict[str, Any] = {"warm_s": [], "exit_codes": []}
    with tempfile.TemporaryDirectory(prefix="doctor-bench-") as cache:
        cmd = [sys.executable, "-m", "localconv", *DOCTOR_ARGS, "--data", data, "--cache-dir", cache]
        for i in range(runs + 1):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            seconds = time.perf_counter() - t0
            out["exit_codes"].append(proc.returncode)
            if i == 0:
                out["cold_s"] = seconds
                out["report_head"] = proc.stdout.splitlines()[:2]
            else:
                out["warm_s"].append(seconds)
    out["warm_median_s"] = statistics.median(out["warm_s"]) if out["warm_s"] else None
    return out


class _Phases:
    """Wall and CPU seconds of named blocks: ``with phases.time("name"): ...``."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.rows[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def by_phase(data: str, threads: int) -> dict[str, dict[str, float]]:
    phases = _Phases()
    with phases.time("import (cli, torch)"):
        import torch

        from localconv.cli.common import load_data
        from localconv.diagnostics.doctor import DoctorOptions, run_doctor
        from localconv.models import create_model
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="doctor-bench-") as cache:
        with phases.time("data, cold cache (decode)"):
            load_data(data, Path(cache), progress=False)
        with phases.time("data, warm cache"):
            d = load_data(data, Path(cache), progress=False)
    with phases.time("model"):
        torch.manual_seed(0)
        model = create_model("tf-tutorial", conv2_std=1e-4)
    with phases.time("watched training + checks"):
        report = run_doctor(model, d.train_images, d.train_labels, DoctorOptions(device="cpu"),
                            classes=list(d.classes))
    with phases.time("report"):
        report.format()
    phases.rows["(verdict: exit code)"] = {"wall_s": float(report.exit_code), "cpu_s": float("nan")}
    return phases.rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 as `localconv doctor --data` takes it")
    parser.add_argument("--runs", type=int, default=2, help="warm-cache runs of the whole command (default: 2)")
    parser.add_argument("--threads", type=int, default=0, help="OMP/torch threads (default: 0 = torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    whole = whole_command(args.data, args.runs, env)
    phases = by_phase(args.data, args.threads)
    if args.json:
        print(json.dumps({"whole_command": whole, "phases": phases, "threads": args.threads}, indent=1))
        return 0
    print(f"localconv {' '.join(DOCTOR_ARGS)} (threads: {args.threads or 'default'})")
    print(f"  cold cache: {whole['cold_s']:.1f} s; warm cache: {whole['warm_median_s']:.1f} s (median of "
          f"{args.runs}); exit codes {whole['exit_codes']}")
    print("by phase (in-process):        wall s   cpu s")
    for name, row in phases.items():
        print(f"  {name:<28} {row['wall_s']:7.2f} {row['cpu_s']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
