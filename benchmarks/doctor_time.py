"""Time of a ``localconv doctor`` diagnosis, whole and by phase (issue 13's target: at most 15 s for
tf-tutorial on the 2-core CPU machine).

    python benchmarks/doctor_time.py --data ../shared/datasets/cifar10-jpeg [--runs 2] [--threads 1] [--json]

1. The command as a user runs it (``python -m localconv doctor --model tf-tutorial --conv2-std 1e-4``), as a
   subprocess, ``--runs`` times each: with an empty decoded-image cache (``cold``: the archives are read to
   their end and only the ~6,000 images doctor uses are decoded), with the subset entry an earlier doctor run
   wrote (``subset``), and with the full entry that ``train``/``eval`` leave (``full``). Wall and CPU seconds
   (user+sys of the child) each, and the exit code (1 = the problem was named). The last line is the
   acceptance figure: the median cold-cache wall time.
2. The same work by phase, in this process: importing localconv's CLI and torch, loading the data (cold and
   warm cache), building the model, the watched training run (:func:`run_doctor`) and formatting the report;
   wall and CPU seconds of each (CPU > wall: several threads; CPU << wall: the machine is busy).

``--threads N`` is passed to doctor's ``--threads`` (default 0: not passed, doctor's own choice of one thread per
idle core; in the by-phase part that choice is made the same way, over the data phases).
Measure on a quiet machine: on a shared one wall times say little, CPU times more.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOCTOR_ARGS = ["doctor", "--model", "tf-tutorial", "--conv2-std", "1e-4", "--device", "cpu"]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CACHE_KINDS = ("cold", "subset", "full")  # empty cache; doctor's own subset entry; the full entry of train/eval


def whole_command(data: str, runs: int, threads: int) -> dict[str, Any]:
    """Wall and CPU seconds of the CLI, ``runs`` times with each kind of decoded-image cache."""
    out: dict[str, Any] = {"exit_codes": []}
    cmd = [sys.executable, "-m", "localconv", *DOCTOR_ARGS, *(["--threads", str(threads)] if threads else []),
           "--data", data]
    with tempfile.TemporaryDirectory(prefix="doctor-bench-") as scratch:
        subset_cache, full_cache = Path(scratch, "subset"), Path(scratch, "full")
        subprocess.run([*cmd, "--cache-dir", str(subset_cache)], capture_output=True, check=False)
        fill = f"from localconv.cli.common import load_data; load_data({data!r}, {str(full_cache)!r}, progress=False)"
        subprocess.run([sys.executable, "-c", fill], check=True)  # what train/eval leave behind
        for kind in CACHE_KINDS:
            walls, cpus = [], []
            for i in range(runs):
                cache = Path(scratch, f"cold-{i}") if kind == "cold" else subset_cache if kind == "subset" \
                    else full_cache
                t0, c0 = time.perf_counter(), _child_cpu()
                proc = subprocess.run([*cmd, "--cache-dir", str(cache)], capture_output=True, text=True, check=False)
                walls.append(time.perf_counter() - t0)
                cpus.append(_child_cpu() - c0)
                out["exit_codes"].append(proc.returncode)
                out["report_head"] = proc.stdout.splitlines()[:2]
            out[f"{kind}_wall_s"], out[f"{kind}_cpu_s"] = walls, cpus
            out[f"{kind}_wall_median_s"] = statistics.median(walls)
            out[f"{kind}_cpu_median_s"] = statistics.median(cpus)
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
        from localconv.data import load_training_subset
        from localconv.diagnostics.doctor import DoctorOptions, doctor_images, run_doctor
        from localconv.diagnostics.idle_cores import IdleCores
        from localconv.models import create_model
    options = DoctorOptions(device="cpu", threads=threads)
    idle = IdleCores()
    with tempfile.TemporaryDirectory(prefix="doctor-bench-") as cache:
        with phases.time("data, cold cache (subset)"):
            load_training_subset(lambda n: doctor_images(n, options), data, Path(cache), progress=False)
        with phases.time("(full decode, for the cache)"):
            load_data(data, Path(cache), progress=False)
        with phases.time("data, warm cache"):
            d = load_training_subset(lambda n: doctor_images(n, options), data, Path(cache), progress=False)
    with phases.time("model"):
        torch.manual_seed(0)
        model = create_model("tf-tutorial", conv2_std=1e-4)
    options.threads = options.threads or idle.threads(torch.get_num_threads())
    with phases.time("watched training + checks"):
        report = run_doctor(model, d.images, d.labels, options, classes=d.classes, subset_of=d.total)
    with phases.time("report"):
        report.format()
    phases.rows["(verdict: exit code)"] = {"wall_s": float(report.exit_code), "cpu_s": float("nan")}
    phases.rows["(threads of the run)"] = {"wall_s": float(options.threads), "cpu_s": float("nan")}
    return phases.rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 as `localconv doctor --data` takes it")
    parser.add_argument("--runs", type=int, default=2, help="warm-cache runs of the whole command (default: 2)")
    parser.add_argument("--threads", type=int, default=0, help="doctor --threads (default: 0 = doctor's choice)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    whole = whole_command(args.data, args.runs, args.threads)
    phases = by_phase(args.data, args.threads)
    if args.json:
        print(json.dumps({"whole_command": whole, "phases": phases, "threads": args.threads}, indent=1))
        return 0
    print(f"localconv {' '.join(DOCTOR_ARGS)}" + (f" --threads {args.threads}" if args.threads else ""))
    for kind in CACHE_KINDS:
        print(f"  {kind + ' cache:':<14} wall {whole[f'{kind}_wall_median_s']:5.1f} s, cpu "
              f"{whole[f'{kind}_cpu_median_s']:5.1f} s (medians of {args.runs})")
    print(f"  exit codes {whole['exit_codes']}")
    print("by phase (in-process):          wall s   cpu s")
    for name, row in phases.items():
        print(f"  {name:<30} {row['wall_s']:7.2f} {row['cpu_s']:7.2f}")
    print(f"acceptance (issue 13: <= 15 s): {whole['cold_wall_median_s']:.1f} s wall, cold cache, median of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
