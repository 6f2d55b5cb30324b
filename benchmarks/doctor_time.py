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

3. ``--zoo``: ``localconv.diagnose`` on the test zoo of tests/doctor_zoo.py (issue 22), no data needed: the wall
   and CPU seconds of one diagnosis of the zoo's healthy CNN, and over ``--seeds`` seeds how many planted bugs
   were named at their layer and how many healthy models got an error (a false alarm) or a warning.
4. ``--watch-cost``: what ``localconv.Watch`` adds to a training step of the zoo's CNN in a plain loop (batch 32,
   one thread): milliseconds per step without it, with ``every=10`` and with ``every=1``, medians of 5 rounds.

    python benchmarks/doctor_time.py --zoo --watch-cost [--seeds 3]

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
        from localconv.cli.doctor_recipe import run_doctor
        from localconv.diagnostics.doctor import DoctorOptions, doctor_images
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


def _zoo() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import doctor_zoo

    return doctor_zoo


def zoo_counts(seeds: int, runs: int) -> dict[str, Any]:
    """Detection and false-alarm counts of the zoo over ``seeds`` seeds, and the time of one diagnosis."""
    zoo = _zoo()
    out: dict[str, Any] = {"bugs": {}, "healthy": {}}
    for case in zoo.BUGS:
        named = [zoo.detected(case, zoo.run_case(case, seed)) for seed in range(seeds)]
        out["bugs"][case.name] = sum(named)
    for case in zoo.HEALTHY:
        reports = [zoo.run_case(case, seed) for seed in range(seeds)]
        out["healthy"][case.name] = {"errors": sum(not r.ok for r in reports),
                                     "warnings": sum(r.ok and not r.healthy for r in reports),
                                     "kinds": sorted({f.kind for r in reports for f in r.problems})}
    cnn = zoo.HEALTHY[0]
    walls, cpus = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        zoo.run_case(cnn)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    out["diagnose_cnn"] = {"case": cnn.name, "steps": zoo.STEPS, "wall_s": statistics.median(walls),
                           "cpu_s": statistics.median(cpus)}
    out["seeds"] = seeds
    return out


def watch_cost(steps: int = 100, rounds: int = 5) -> dict[str, float]:
    """Milliseconds per training step of the zoo CNN without Watch, with every=10 and every=1."""
    import torch
    import torch.nn.functional as F

    import localconv

    zoo = _zoo()
    x, y = zoo.zoo_data()

    def loop(every: int | None) -> float:
        torch.manual_seed(0)
        model = zoo.cnn()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        watch = localconv.Watch(model, every=every, dense_start=0) if every else None
        if watch is not None:
            watch.__enter__()
        t0 = time.perf_counter()
        for step in range(steps):
            i = (step * 32) % (len(y) - 32)
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            optimizer.zero_grad()
            loss.backward()
            if watch is not None:
                watch.after_backward(loss, y[i:i + 32])
            optimizer.step()
            if watch is not None:
                watch.after_step()
        elapsed = time.perf_counter() - t0
        if watch is not None:
            watch.__exit__(None, None, None)
        return 1000 * elapsed / steps

    times: dict[str, list[float]] = {"plain": [], "every=10": [], "every=1": []}
    for _ in range(rounds):  # interleaved: a load change hits all three alike
        times["plain"].append(loop(None))
        times["every=10"].append(loop(10))
        times["every=1"].append(loop(1))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 as `localconv doctor --data` takes it (the CLI timings)")
    parser.add_argument("--zoo", action="store_true", help="time diagnose() on the zoo CNN; detection counts")
    parser.add_argument("--seeds", type=int, default=3, help="--zoo: seeds per zoo model (default: 3)")
    parser.add_argument("--watch-cost", action="store_true", help="Watch's cost per training step")
    parser.add_argument("--runs", type=int, default=2, help="warm-cache runs of the whole command (default: 2)")
    parser.add_argument("--threads", type=int, default=0, help="doctor --threads (default: 0 = doctor's choice)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.zoo or args.watch_cost:
        import torch

        torch.set_num_threads(args.threads or 1)
        result: dict[str, Any] = {}
        if args.zoo:
            result["zoo"] = zoo_counts(args.seeds, args.runs)
        if args.watch_cost:
            result["watch_ms_per_step"] = watch_cost()
        if args.json:
            print(json.dumps(result, indent=1))
            return 0
        if args.zoo:
            z = result["zoo"]
            print(f"zoo, {z['seeds']} seeds each, torch threads {torch.get_num_threads()}:")
            for name, hits in z["bugs"].items():
                print(f"  named at its layer {hits}/{z['seeds']}: {name}")
            for name, h in z["healthy"].items():
                print(f"  false errors {h['errors']}/{z['seeds']}, warnings {h['warnings']}/{z['seeds']}: {name}"
                      + (f" ({', '.join(h['kinds'])})" if h["kinds"] else ""))
            d = z["diagnose_cnn"]
            print(f"  diagnose() on {d['case']}, {d['steps']} steps: wall {d['wall_s']:.2f} s, cpu {d['cpu_s']:.2f} s "
                  f"(median of {args.runs})")
        if args.watch_cost:
            w = result["watch_ms_per_step"]
            print("Watch on the zoo CNN (batch 32, 100 steps, median of 5): " +
                  ", ".join(f"{k} {v:.2f} ms/step" for k, v in w.items()))
        return 0
    if not args.data:
        parser.error("--data is required (or --zoo / --watch-cost)")
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
