"""What the decoded cache's key and a run's data identity cost (docs/data.md, *The decoded cache*).

    python benchmarks/data_cache_time.py --data ../shared/datasets/cifar10-jpeg [--data EXTRACTED_TREE] [--runs 3]

For each ``--data``: the first load into a fresh cache folder (decoding), ``--runs`` cached loads, the
detection of the source plus its cache key alone (for tarballs: hashing their bytes; for a tree: listing and
stat-ing every file), and :func:`localconv.data.identity.identity_record` with ``--val-split 5000`` (SHA-256
of the 45,000 training and 5,000 validation images' pixels). Wall seconds; measure on a quiet machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def seconds(action, runs: int) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="a dataset (repeatable)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from localconv.data import load_cifar10
    from localconv.data.cache import fingerprint
    from localconv.data.formats import DataOptions, detect_source
    from localconv.data.identity import identity_record

    def key(source: str) -> str:
        found = detect_source(source, DataOptions())
        return fingerprint(found.kind, found.path, found.files, found.listing, by_content=found.keyed_by_content)

    for source in args.data:
        with tempfile.TemporaryDirectory() as cache:
            first = seconds(lambda: load_cifar10(source, cache, progress=False), 1)[0]
            cached = seconds(lambda: load_cifar10(source, cache, progress=False), args.runs)
            keyed = seconds(lambda: key(source), args.runs)
            data = load_cifar10(source, cache, progress=False)
            identity = seconds(lambda: identity_record(data, val_split=5000), args.runs)
        shown = ", ".join
        print(f"{Path(source).name}: first load {first:.1f} s; cached load {shown(f'{t:.2f}' for t in cached)} s; "
              f"detection + key {shown(f'{t:.3f}' for t in keyed)} s; identity (45,000 + 5,000 images) "
              f"{shown(f'{t:.3f}' for t in identity)} s")


if __name__ == "__main__":
    main()
