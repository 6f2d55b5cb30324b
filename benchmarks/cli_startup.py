"""Wall time of ``localconv --help`` (and of a usage error), against ``python -c "import torch"``.

    python benchmarks/cli_startup.py [--runs 15] [--json]

Each command runs ``--runs`` times as a fresh subprocess (interleaved, so that a burst of load hits
all of them alike); the median wall time of each is printed, with the ratio of ``localconv --help``
to ``import torch`` measured in the same run. Issue 13's target: ``--help`` and usage errors under
1 s, i.e. well below the cost of importing torch (the parser must not import it). Measure on a
quiet machine: on a shared one the figures say little.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "localconv --help": [sys.executable, "-m", "localconv", "--help"],
    "localconv train (usage error)": [sys.executable, "-m", "localconv", "train", "--no-such-option"],
    "localconv doctor --help": [sys.executable, "-m", "localconv", "doctor", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "python -c 'pass'": [sys.executable, "-c", "pass"],
}


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def measure(runs: int) -> dict[str, float]:
    """Median seconds per command over ``runs`` interleaved rounds (after one untimed warm round)."""
    for cmd in COMMANDS.values():  # fill the OS file cache
        _time(cmd)
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, cmd in COMMANDS.items():
            samples[name].append(_time(cmd))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (default: 15)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    medians = measure(args.runs)
    ratio = medians["localconv --help"] / medians["python -c 'import torch'"]
    if args.json:
        print(json.dumps({"median_s": medians, "help_over_import_torch": ratio, "runs": args.runs}, indent=1))
    else:
        for name, seconds in medians.items():
            print(f"{name:<32} {seconds * 1000:8.0f} ms (median of {args.runs})")
        print(f"localconv --help / import torch: {ratio:.2f}x")
    return 0 if medians["localconv --help"] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
