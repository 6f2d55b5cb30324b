"""Benchmark LocallyConnected2d (forward + backward): time and peak memory against baselines.

    python benchmarks/local_layer.py [--device cpu|cuda] [--quick] [--json OUT] [--threads 2] [--before]

Shapes: cuda-convnet cc-11pct's local3 (C=64 -> O=64) and local4 (C=64 -> O=32), 3x3 pad 1, at
6x6 and 8x8 outputs, N in {128, 512}, plus one larger layer (C=64, 16x16, 3x3, O=64, N=128).

Every figure is a ratio against a baseline measured in the same run, on the same shapes:
  conv2d         F.conv2d, shared weights: the lower bound (target: localconv <= 1.5x on GPU, <= 2x on CPU)
  snippet        the widely copied broadcast-multiply LocallyConnected2d (N*O*C*L*k^2 temporary)
  unfold-einsum  F.unfold + einsum with plain autograd (the einsum runs as one bmm over positions: unfold+bmm)
Methods of localconv: local-portable (the portable backend with a plain contiguous weight, as
LocallyConnected2d stores it on every device since issue 23; on CPU the op copies it taps-last once per
forward for its GEMMs, and a float32 forward runs them as oneDNN convolutions; its ratio is the acceptance
figure), with --before also the code before its changes, side by side: local-portable-taps-last (the
parameter itself stored taps-last, [*out, O, kh, kw, C] memory order, built with
local_portable.taps_last_weight, and on CPU the forward's GEMMs as MKL bmm: the CPU code before
issue 23) and on CPU local-portable-bmm (the contiguous parameter, the forward with oneDNN off,
torch.backends.mkldnn.flags(enabled=False): the code before local_onednn), and on CUDA
local-triton (fused kernels).

Time: median over rounds of round-robin blocks of calls (all methods of a shape interleaved,
so that load from other processes hits them alike), after a warm-up call. Peak memory: on CUDA,
torch.cuda.max_memory_allocated() above the memory held before the step; on CPU, the peak resident
set size during one step minus the RSS just before it, in a fresh subprocess per (method, shape):
the kernel's peak mark (VmHWM) is reset through /proc/self/clear_refs right before the step, after
a tiny warm-up step. (tracemalloc does not see torch's allocations.) The inputs and parameters
exist before the step and are not counted; the gradients the step creates are. "kept": what
localconv holds between steps on the CPU (the per-thread scratch buffer, local_portable.scratch_bytes(),
and the weight's taps-last buffer), measured in the same subprocess after the step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from localconv.nn.functional import local_conv2d
from localconv.nn import local_ops, local_portable
from localconv.nn.local_portable import taps_last_weight

BASELINES = ("conv2d", "unfold-einsum", "snippet")


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    c: int
    size: int  # input side = output side (3x3, stride 1, pad 1)
    o: int
    k: int = 3
    pad: int = 1

    @property
    def positions(self) -> int:
        out = self.size + 2 * self.pad - self.k + 1
        return out * out

    def snippet_bytes(self, itemsize: int = 4) -> int:
        """Size of the snippet's broadcast product N*O*C*L*k^2."""
        return self.n * self.o * self.c * self.positions * self.k**2 * itemsize


def benchmark_shapes(quick: bool = False) -> list[Shape]:
    shapes = [Shape(f"{layer}-{side}x{side}-N{n}", n, 64, side, o)
              for n in (128, 512) for side in (6, 8) for layer, o in (("local3", 64), ("local4", 32))]
    shapes.append(Shape("large-16x16-N128", 128, 64, 16, 64))
    if quick:
        keep = {"local3-6x6-N128", "local4-6x6-N128", "local3-8x8-N512"}
        shapes = [s for s in shapes if s.name in keep]
    return shapes


def local_methods(device: str, before: bool = False) -> list[str]:
    """localconv's methods; ``before``: also the CPU code before its changes (see BEFORE_METHODS)."""
    before_cpu = ["local-portable-taps-last"] + (["local-portable-bmm"] if device == "cpu" else [])
    return (["local-portable"] + (before_cpu if before else [])
            + (["local-triton"] if device == "cuda" else []))


def default_local_method(device: str) -> str:
    """The method ``backend='auto'`` picks: what users get."""
    return "local-triton" if device == "cuda" else "local-portable"


# ----------------------------------------------------------------------------------------------
# The computations compared (each returns the output of one forward).


def snippet_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """The commonly copied LocallyConnected2d forward (no padding of its own: F.pad first).

    weight [1, O, C, OH, OW, k*k], bias [1, O, OH, OW]."""
    x = F.pad(x, (pad, pad, pad, pad))
    x = x.unfold(2, k, 1).unfold(3, k, 1)
    x = x.contiguous().view(*x.size()[:-2], -1)
    out = (x.unsqueeze(1) * weight).sum([2, -1])
    return out + bias


def unfold_einsum_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """F.unfold + einsum with plain autograd; weight in localconv's layout."""
    n = x.shape[0]
    oh, ow, o = weight.shape[:3]
    cols = F.unfold(x, k, padding=pad)  # [N, C*k*k, L]
    y = torch.einsum("nkl,lok->nol", cols, weight.reshape(oh * ow, o, -1))
    return y.reshape(n, o, oh, ow) + bias


def build_step(method: str, shape: Shape, device: str, dtype: torch.dtype = torch.float32,
               autocast_dtype: torch.dtype | None = None, seed: int = 0) -> Callable[[], None]:
    """Allocate inputs and parameters for ``method`` at ``shape``; return a closure doing forward + backward."""
    gen = torch.Generator().manual_seed(seed)
    s, k, pad = shape, shape.k, shape.pad
    out = s.size + 2 * pad - k + 1

    def param(*size: int, std: float = 0.05) -> torch.Tensor:
        return (torch.randn(*size, generator=gen) * std).to(device=device, dtype=dtype).requires_grad_()

    x = torch.randn(s.n, s.c, s.size, s.size, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    grad_dtype = autocast_dtype or dtype
    grad = torch.randn(s.n, s.o, out, out, generator=gen).to(device=device, dtype=grad_dtype)
    if method == "conv2d":
        params = [param(s.o, s.c, k, k), param(s.o)]
        forward = lambda: F.conv2d(x, params[0], params[1], padding=pad)  # noqa: E731
    elif method == "snippet":
        params = [param(1, s.o, s.c, out, out, k * k), param(1, s.o, out, out)]
        forward = lambda: snippet_forward(x, params[0], params[1], k, pad)  # noqa: E731
    else:
        params = [param(out, out, s.o, s.c, k, k), param(s.o, out, out)]
        if method == "unfold-einsum":
            forward = lambda: unfold_einsum_forward(x, params[0], params[1], k, pad)  # noqa: E731
        elif method in ("local-portable", "local-triton", "local-portable-taps-last", "local-portable-bmm"):
            backend = method.split("-")[1]
            if method == "local-portable-taps-last":  # the parameter as LocallyConnected2d stored it before
                params[0] = taps_last_weight(params[0].detach(), 2).requires_grad_()
            if method in ("local-portable-bmm", "local-portable-taps-last") and device == "cpu":
                # the CPU forward before its oneDNN path: MKL bmm GEMMs (taps-last: all the code before issue 23)
                # (flags() also sets oneDNN's TF32 switch, which warns on builds without Intel GPU support)
                warnings.filterwarnings("ignore", "TF32 acceleration on top of oneDNN")
                def forward() -> torch.Tensor:
                    with torch.backends.mkldnn.flags(enabled=False):
                        return local_conv2d(x, params[0], params[1], 1, pad, backend=backend)
            else:
                forward = lambda: local_conv2d(x, params[0], params[1], 1, pad, backend=backend)  # noqa: E731
        else:
            raise ValueError(f"unknown method {method!r}")
    leaves = [x, *params]

    def step() -> None:
        for t in leaves:
            t.grad = None
        if autocast_dtype is not None:
            with torch.autocast(device_type=device, dtype=autocast_dtype):
                y = forward()
        else:
            y = forward()
        y.backward(grad)

    step.leaves = leaves  # type: ignore[attr-defined]  (peak_memory_cuda clears their grads)
    return step


# ----------------------------------------------------------------------------------------------
# Measurements.


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(steps: dict[str, Callable[[], None]], device: str, rounds: int = 7,
               block_seconds: float = 0.1, statistic: Callable[[list[float]], float] = statistics.median
               ) -> dict[str, float]:
    """Seconds per call of each step (median over rounds, or ``statistic``), measured round-robin.

    Each round times one block of calls of every method in turn, so that load from other
    processes (a shared machine) hits all methods alike instead of whichever ran during a burst.
    """
    per_block = {}
    for name, step in steps.items():
        step()  # warm-up: lazy initialization, autotuning, allocator growth
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        per_block[name] = max(1, int(block_seconds / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(per_block[name]):
                step()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / per_block[name])
    return {name: statistic(values) for name, values in samples.items()}


def peak_memory_cuda(step: Callable[[], None]) -> int:
    """Bytes allocated at the peak of one step, above what was held before it (inputs, parameters;
    the gradients the step creates are counted, as on the CPU)."""
    step()
    for t in getattr(step, "leaves", []):
        t.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def kept_bytes() -> int:
    """What localconv keeps between steps on the CPU: the per-thread scratch buffers and the taps-last
    weight buffers (see docs/local_layer.md, "Memory")."""
    return local_portable.scratch_bytes() + local_ops.weight_buffer_bytes()


def measure_cpu_memory_here(method: str, shape: Shape, threads: int) -> tuple[int, int]:
    """Run in a fresh process: (peak RSS during one step minus the RSS just before it, bytes kept after it).

    The peak mark is reset right before the step (/proc/self/clear_refs), so the import of torch
    and the tiny warm-up step (which loads kernels and starts thread pools) cannot mask it.
    """
    torch.set_num_threads(threads)
    build_step(method, Shape("warmup", 2, shape.c, 4, shape.o), "cpu")()
    step = build_step(method, shape, "cpu")
    if _reset_peak_rss():
        before = _proc_status_kib("VmRSS")
        step()
        return max(0, _proc_status_kib("VmHWM") - before) * 1024, kept_bytes()
    # Fallback without clear_refs: growth of the lifetime peak (can under-count; never over-counts).
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, kept_bytes()


def peak_memory_cpu(method: str, shape: Shape, threads: int) -> tuple[int, int]:
    """(peak-RSS growth of one step, bytes kept after it), measured in a subprocess so that no earlier
    step masks it."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", method, json.dumps(asdict(shape)),
           "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess for {method} {shape.name} failed:\n{done.stderr[-2000:]}")
    peak, kept = done.stdout.strip().splitlines()[-1].split()
    return int(peak), int(kept)


def run_benchmarks(shapes: list[Shape], methods: list[str], device: str, threads: int = 2,
                   rounds: int = 7, snippet_max_bytes: float = 3e9, block_seconds: float = 0.1,
                   dtype: torch.dtype = torch.float32, autocast_dtype: torch.dtype | None = None,
                   log: Callable[[str], None] = print) -> list[dict]:
    """One record per (shape, method): seconds, peak bytes (None if skipped) and why skipped."""
    torch.set_num_threads(threads)
    records = []
    for shape in shapes:
        shape_records = {}
        for method in methods:
            shape_records[method] = {
                "shape": shape.name, **asdict(shape), "method": method, "device": device,
                "dtype": str(autocast_dtype or dtype).replace("torch.", ""), "seconds": None,
                "seconds_min": None, "peak_bytes": None, "kept_bytes": None, "skipped": None}
            if method == "snippet" and shape.snippet_bytes() > snippet_max_bytes:
                shape_records[method]["skipped"] = (
                    f"broadcast product would be {shape.snippet_bytes() / 1e9:.1f} GB "
                    f"(> limit {snippet_max_bytes / 1e9:g} GB)")
        for method, record in shape_records.items():  # memory first: one method's tensors at a time
            if record["skipped"]:
                continue
            if device == "cuda":
                record["peak_bytes"] = peak_memory_cuda(build_step(method, shape, device, dtype, autocast_dtype))
                torch.cuda.empty_cache()
            else:
                record["peak_bytes"], record["kept_bytes"] = peak_memory_cpu(method, shape, threads)
        steps = {m: build_step(m, shape, device, dtype, autocast_dtype)
                 for m, r in shape_records.items() if not r["skipped"]}
        for method, values in time_steps(steps, device, rounds, block_seconds, statistic=list).items():
            shape_records[method]["seconds"] = statistics.median(values)
            shape_records[method]["seconds_min"] = min(values)
        del steps
        if device == "cuda":
            torch.cuda.empty_cache()
        for record in shape_records.values():
            records.append(record)
            log(_format_record(record))
    return records


def _format_record(r: dict) -> str:
    if r["skipped"]:
        return f"  {r['shape']:<18} {r['method']:<24} skipped: {r['skipped']}"
    kept = f" (kept {r['kept_bytes'] / 2**20:.1f} MiB)" if r.get("kept_bytes") else ""
    return (f"  {r['shape']:<18} {r['method']:<24} {r['seconds'] * 1e3:9.2f} ms (min {r['seconds_min'] * 1e3:.2f}) "
            f"{r['peak_bytes'] / 2**20:9.1f} MiB peak{kept}")


def ratio_rows(records: list[dict], local_method: str, time_key: str = "seconds") -> list[dict]:
    """Per shape: localconv vs each baseline (time and peak-memory ratios); ``time_key`` is
    'seconds' (median over rounds) or 'seconds_min' (least disturbed round)."""
    by_key = {(r["shape"], r["method"]): r for r in records}
    rows = []
    for shape in dict.fromkeys(r["shape"] for r in records):
        local = by_key.get((shape, local_method))
        if local is None or local["seconds"] is None:
            continue
        row = {"shape": shape, "method": local_method, "time": time_key, "ms": local[time_key] * 1e3,
               "MiB": local["peak_bytes"] / 2**20}
        for base in BASELINES:
            other = by_key.get((shape, base))
            if other is None or other["seconds"] is None:
                row[base] = None
                continue
            row[base] = {"time_local_over_base": local[time_key] / other[time_key],
                         "mem_local_over_base": (local["peak_bytes"] / other["peak_bytes"]
                                                 if other["peak_bytes"] else None)}
        rows.append(row)
    return rows


def format_ratio_table(rows: list[dict]) -> str:
    """Markdown table: time and peak memory of localconv relative to each baseline."""

    def cell(entry: dict | None, invert: bool) -> str:
        if entry is None:
            return "n/a"
        t, m = entry["time_local_over_base"], entry["mem_local_over_base"]
        if invert:  # "how many times better than the baseline"
            return f"{1 / t:.1f}x faster, {1 / m:.0f}x less mem" if m else f"{1 / t:.1f}x faster"
        return f"{t:.2f}x time, {m:.2f}x mem" if m else f"{t:.2f}x time"

    lines = ["| shape | localconv ms | peak MiB | vs conv2d (local/conv) | vs snippet | vs unfold+einsum |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['ms']:.2f} | {r['MiB']:.1f} | {cell(r['conv2d'], False)} | "
                     f"{cell(r['snippet'], True)} | {cell(r['unfold-einsum'], True)} |")
    return "\n".join(lines)


def worst_conv2d_line(rows: list[dict]) -> str:
    """The acceptance line: worst time ratio to F.conv2d on cc-11pct's shapes (target <= 2.0x) and on
    the 16x16 layer (target <= 4x)."""
    def worst(select: Callable[[str], bool]) -> tuple[float, str] | None:
        pairs = [(r["conv2d"]["time_local_over_base"], r["shape"]) for r in rows
                 if select(r["shape"]) and r.get("conv2d")]
        return max(pairs) if pairs else None

    parts = []
    for label, target, select in (("cc-11pct shapes", 2.0, lambda name: "6x6" in name),
                                  ("16x16", 4.0, lambda name: "16x16" in name)):
        found = worst(select)
        if found is not None:
            verdict = "met" if found[0] <= target else "NOT met"
            parts.append(f"{label} {found[0]:.2f}x at {found[1]} (target <= {target:g}x: {verdict})")
    return "worst ratio to conv2d: " + ("; ".join(parts) if parts else "n/a (no conv2d baseline measured)")


BEFORE_METHODS = {  # method -> what it measures: the CPU code before a change, side by side in the same run
    "local-portable-taps-last": "before issue 23: the parameter stored taps-last, the forward's GEMMs as MKL bmm",
    "local-portable-bmm": "the contiguous parameter, the forward's GEMMs as MKL bmm: before its oneDNN path",
}


def before_after_line(records: list[dict], before: str, time_key: str = "seconds") -> str:
    """Per shape: time of local-portable (after) over the ``before`` method, same run."""
    by_key = {(r["shape"], r["method"]): r for r in records}
    parts = []
    for shape in dict.fromkeys(r["shape"] for r in records):
        after, base = by_key.get((shape, "local-portable")), by_key.get((shape, before))
        if after and base and after[time_key] and base[time_key]:
            parts.append(f"{shape} {after[time_key] / base[time_key]:.2f}x")
    return f"after/before time (local-portable / {before}): " + (", ".join(parts) or "n/a")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="three shapes, shorter timing")
    parser.add_argument("--json", metavar="OUT", help="write all records and ratios here")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--only", metavar="TEXT", help="only shapes whose name contains TEXT")
    parser.add_argument("--methods", metavar="A,B", help="comma list (default: all)")
    parser.add_argument("--before", action="store_true",
                        help="also time the CPU code before its changes side by side (local-portable-taps-last: "
                             "the code before issue 23, the parameter stored taps-last and the forward's GEMMs as MKL "
                             "bmm; local-portable-bmm: the contiguous parameter, before the oneDNN forward) and "
                             "print after/before ratios")
    parser.add_argument("--statistic", choices=("median", "min"), default="median",
                        help="time statistic of the ratio table (min: least disturbed round, for loaded machines)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7, quick 3)")
    parser.add_argument("--block-seconds", type=float, default=0.1, help="length of one timed block of calls")
    parser.add_argument("--snippet-max-gb", type=float, default=None,
                        help="skip the snippet when its broadcast product exceeds this (default 3 CPU, 30 CUDA)")
    parser.add_argument("--memory-child", nargs=2, metavar=("METHOD", "SHAPE_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        method, shape_json = args.memory_child
        print(*measure_cpu_memory_here(method, Shape(**json.loads(shape_json)), args.threads))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    shapes = [s for s in benchmark_shapes(args.quick) if not args.only or args.only in s.name]
    methods = (args.methods.split(",") if args.methods
               else [*local_methods(args.device, args.before), *BASELINES])
    if args.before:
        methods += [m for m in local_methods(args.device, True) if m not in methods]
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 7)
    snippet_gb = args.snippet_max_gb if args.snippet_max_gb is not None else (30 if args.device == "cuda" else 3)
    print(f"device={args.device} threads={args.threads} torch={torch.__version__}")
    records = run_benchmarks(shapes, methods, args.device, args.threads, rounds, snippet_gb * 1e9,
                             args.block_seconds)
    local = default_local_method(args.device)
    rows = ratio_rows(records, local, "seconds_min" if args.statistic == "min" else "seconds")
    print(f"\nlocalconv = {local} (what backend='auto' uses on {args.device}); fwd+bwd, fp32, "
          f"{args.statistic} time over rounds")
    print(format_ratio_table(rows))
    time_key = "seconds_min" if args.statistic == "min" else "seconds"
    for before, meaning in BEFORE_METHODS.items():
        before_rows = ratio_rows(records, before, time_key)
        if before_rows:
            print(f"\nlocalconv = {before} ({meaning}):")
            print(format_ratio_table(before_rows))
            print(before_after_line(records, before, time_key))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "threads": args.threads, "torch": torch.__version__,
                       "records": records, "ratios": rows}, f, indent=1)
    print(worst_conv2d_line(rows))  # last line: the acceptance figure
    return 0


if __name__ == "__main__":
    sys.exit(main())
