"""GPU checks of LocallyConnected2d: parity of the backends, the benchmark table, torch.compile.

    python benchmarks/gpu_local_layer.py --out FILE.json [--tune] [--profile]

(a) parity: the triton and portable backends against the naive per-position reference (float64)
    and against each other, forward and the input/weight/bias gradients, on the odd shapes of the
    tests and the cc-11pct shapes, in fp32 and under bf16 autocast. Errors are
    ||got - ref|| / ||ref||; before each backend runs, the allocator's free memory is filled with NaN
    (best effort: a small output may come from a block that was not poisoned), so that an unwritten
    element fails. Tolerances: fp32 1e-5 (IEEE fp32 dots: torch's default
    allow_tf32=False, which the triton backend follows), bf16 2e-2 (8-bit mantissa operands).
(b) the benchmark table of benchmarks/local_layer.py on CUDA (strict fp32, TF32 off for every method,
    and bf16 autocast for localconv vs conv2d).
(c) torch.compile (inductor, fullgraph) of a cc-11pct top (two local layers + fc) vs eager.
Writes one JSON object to --out, prints a summary, exits 1 if any parity or compile check fails.
--tune also times a few tile configurations of each kernel (for choosing the defaults); --profile
prints a torch.profiler table of one local-triton step (CPU launch overhead vs kernel time).
Measured on an H200: 84 s without --tune before the tile sizes were retuned (parity 57 s of it, mostly Triton
compiles); after the retune the parity part took 62 s, the rest was not re-timed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))

import local_layer as bench  # noqa: E402  (benchmarks/local_layer.py: shapes, steps, timing, tables)
from test_local_layer import ODD_CASES, naive_local_conv2d  # noqa: E402  (the reference of the tests)

from localconv import LocallyConnected2d  # noqa: E402
from localconv.nn.functional import local_conv2d  # noqa: E402
from localconv.nn.utils import _padding4, _pair  # noqa: E402

TOLERANCE = {"fp32": 1e-5, "bf16-autocast": 2e-2}


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _poison_allocator(device: str) -> None:
    """Fill the caching allocator's free blocks with NaN so a kernel's unwritten output shows."""
    if device != "cuda":
        return
    free = torch.cuda.mem_get_info()[0]
    blob = torch.full((min(free // 8, 2**28),), float("nan"), device="cuda")
    del blob


def parity_cases() -> list[tuple]:
    cc = [(s.name, s.n, s.c, (s.size, s.size), s.o, s.k, 1, s.pad) for s in bench.benchmark_shapes()
          if s.name in ("local3-6x6-N128", "local4-6x6-N128", "local3-8x8-N512", "local4-8x8-N512")]
    return list(ODD_CASES) + cc


def run_parity(case: tuple, mode: str, seed: int = 0, device: str = "cuda") -> dict:
    """Errors of each backend vs the float64 reference, and triton vs portable."""
    name, n, c, (h, w), o, kernel, stride, padding = case
    (kh, kw), (sh, sw) = _pair(kernel), _pair(stride)
    top, bottom, left, right = _padding4(padding)
    oh, ow = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, c, h, w, device=device, generator=gen)
    weight = torch.randn(oh, ow, o, c, kh, kw, device=device, generator=gen) / math.sqrt(c * kh * kw)
    bias = torch.randn(o, oh, ow, device=device, generator=gen)
    grad = torch.randn(n, o, oh, ow, device=device, generator=gen)
    leaves64 = [t.double().requires_grad_() for t in (x, weight, bias)]
    ref_y = naive_local_conv2d(*leaves64, stride, padding)
    refs = [ref_y, *torch.autograd.grad(ref_y, leaves64, grad.double())]
    results, outputs = {}, {}
    for backend in ("triton", "portable"):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        _poison_allocator(device)
        if mode == "bf16-autocast":
            with torch.autocast(device, dtype=torch.bfloat16):
                y = local_conv2d(*leaves, stride, padding, backend=backend)
        else:
            y = local_conv2d(*leaves, stride, padding, backend=backend)
        got = [y, *torch.autograd.grad(y, leaves, grad.to(y.dtype))]
        outputs[backend] = got
        results[backend] = {k: _rel(g, r) for k, g, r in zip(("y", "grad_x", "grad_w", "grad_b"), got, refs)}
    results["triton_vs_portable"] = {
        k: _rel(a, b) for k, a, b in zip(("y", "grad_x", "grad_w", "grad_b"), outputs["triton"], outputs["portable"])}
    worst = max(v for errors in results.values() for v in errors.values())
    return {"case": name, "mode": mode, "errors": results, "worst": worst, "tolerance": TOLERANCE[mode],
            "ok": worst <= TOLERANCE[mode]}


def compile_check() -> dict:
    """torch.compile (inductor, fullgraph) of the cc-11pct top against eager, fp32, triton backend."""
    torch.manual_seed(0)
    model = nn.Sequential(LocallyConnected2d(64, 64, 6, 3, padding=1, init_std=0.04), nn.ReLU(),
                          LocallyConnected2d(64, 32, 6, 3, padding=1, init_std=0.04), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 6 * 32, 10)).cuda()
    x = torch.randn(128, 64, 6, 6, device="cuda")

    def run(m: nn.Module) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        out = m(x)
        out.square().mean().backward()
        return [out.detach(), *(p.grad.clone() for p in model.parameters())]

    eager = run(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    start = time.perf_counter()
    got = run(compiled)
    compile_seconds = time.perf_counter() - start
    worst = max(_rel(g, e) for g, e in zip(got, eager))
    times = bench.time_steps({"eager": lambda: run(model), "compiled": lambda: run(compiled)}, "cuda",
                             rounds=5, block_seconds=0.02)
    return {"worst_rel_error": worst, "ok": worst <= 1e-5, "first_call_seconds": compile_seconds,
            "step_ms": {k: v * 1e3 for k, v in times.items()}}


def profile_step(shape_name: str, steps: int = 10) -> str:
    """torch.profiler table (CPU and CUDA time per op) of the local-triton fwd+bwd step."""
    shape = next(s for s in bench.benchmark_shapes() if s.name == shape_name)
    step = bench.build_step("local-triton", shape, "cuda")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)


def tune(shapes: list[str]) -> list[dict]:
    """Median time of a few tile configurations per kernel (triton.testing.do_bench)."""
    import triton.testing

    from localconv.nn import triton_local as tl_mod

    fwd = [dict(BLOCK_N=bn, BLOCK_O=bo, BLOCK_K=bk, num_warps=nw)
           for bn, bo, bk, nw in [(64, 64, 32, 4), (64, 64, 64, 4), (128, 64, 32, 4), (128, 64, 64, 8),
                                  (32, 64, 64, 4), (64, 32, 64, 4), (128, 32, 64, 4), (64, 64, 128, 8)]]
    gin = [dict(BLOCK_N=bn, BLOCK_C=bc, BLOCK_O=bo, num_warps=nw)
           for bn, bc, bo, nw in [(64, 64, 32, 4), (64, 64, 64, 4), (128, 64, 32, 8), (32, 64, 64, 4),
                                  (64, 32, 64, 4), (128, 64, 64, 8), (32, 32, 32, 4), (128, 32, 32, 4)]]
    gw = [dict(BLOCK_O=bo, BLOCK_K=bk, BLOCK_N=bn, num_warps=nw)
          for bo, bk, bn, nw in [(64, 64, 32, 4), (64, 64, 64, 4), (64, 128, 32, 8), (32, 64, 64, 4),
                                 (64, 32, 64, 4), (64, 128, 64, 8), (32, 128, 32, 4), (64, 64, 128, 8)]]
    rows = []
    for shape in [s for s in bench.benchmark_shapes() if s.name in shapes]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape.n, shape.c, shape.size, shape.size, device="cuda", dtype=dtype)
            w = torch.randn(shape.size, shape.size, shape.o, shape.c, 3, 3, device="cuda", dtype=dtype)
            b = torch.randn(shape.o, shape.size, shape.size, device="cuda", dtype=dtype)
            gy = torch.randn(shape.n, shape.o, shape.size, shape.size, device="cuda", dtype=dtype)
            geo = ((1, 1), (1, 1))
            default = tl_mod.default_configs(shape.n, shape.c, shape.o, shape.c * 9, dtype)
            kernels = {
                "forward": (fwd, lambda cfg: tl_mod.launch_forward(x, w, b, *geo, config=cfg)),
                "grad_input": (gin, lambda cfg: tl_mod.launch_grad_input(gy, w, list(x.shape), *geo, config=cfg)),
                "grad_weight": (gw, lambda cfg: tl_mod.launch_grad_weight(gy, x, list(w.shape), *geo, config=cfg)),
            }
            for kernel, (configs, launch) in kernels.items():
                for cfg in [default[kernel], *configs]:
                    try:
                        ms = triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20, return_mode="median")
                    except Exception as exc:  # noqa: BLE001 (a config the compiler refuses: report it)
                        ms = None
                        print(f"  {kernel} {cfg}: {type(exc).__name__}: {str(exc)[:120]}")
                    rows.append({"shape": shape.name, "dtype": str(dtype), "kernel": kernel, "config": cfg,
                                 "default": cfg is default[kernel], "ms": ms})
            best = {}
            for r in rows:
                if r["shape"] == shape.name and r["dtype"] == str(dtype) and r["ms"] is not None:
                    if r["kernel"] not in best or r["ms"] < best[r["kernel"]]["ms"]:
                        best[r["kernel"]] = r
            for kernel, r in best.items():
                d = next(q for q in rows if q["shape"] == shape.name and q["dtype"] == str(dtype)
                         and q["kernel"] == kernel and q["default"])
                print(f"  tune {shape.name} {str(dtype)[6:]} {kernel}: default {d['ms']:.4f} ms, "
                      f"best {r['ms']:.4f} ms {r['config']}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--tune", action="store_true", help="also time tile configurations")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one step")
    parser.add_argument("--skip-bench", action="store_true", help="parity and compile checks only")
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="(development) fp32 parity of two small cases on the CPU under TRITON_INTERPRET=1 "
                             "(triton 3.9's interpreter computes bf16 dots wrongly, so no bf16 here)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress survives a timeout kill
    if args.smoke_cpu:
        results = [run_parity(case, "fp32", device="cpu") for case in ODD_CASES[:3]]
        print(json.dumps(results, indent=1))
        return 0 if all(r["ok"] for r in results) else 1
    if not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    import triton

    started = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "triton": triton.__version__, "cuda": torch.version.cuda}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # strict fp32 for every method in parity and the fp32 table

    parity = [run_parity(case, mode) for mode in ("fp32", "bf16-autocast") for case in parity_cases()]
    report["parity"] = parity
    report["parity_ok"] = all(p["ok"] for p in parity)
    print(f"parity: {sum(p['ok'] for p in parity)}/{len(parity)} ok "
          f"({time.perf_counter() - started:.0f} s)")
    for p in parity:
        if not p["ok"] or p["case"].startswith("local3-8x8"):
            print(f"  {'ok  ' if p['ok'] else 'FAIL'} {p['case']:<24} {p['mode']:<14} worst {p['worst']:.2e} "
                  f"(tol {p['tolerance']:.0e}) triton {max(p['errors']['triton'].values()):.2e} "
                  f"portable {max(p['errors']['portable'].values()):.2e}")

    if not args.skip_bench:
        shapes = bench.benchmark_shapes()
        methods = ["local-triton", "local-portable", *bench.BASELINES]
        fp32 = bench.run_benchmarks(shapes, methods, "cuda", rounds=5, block_seconds=0.02, snippet_max_bytes=30e9,
                                    log=lambda s: None)
        bf16 = bench.run_benchmarks(shapes, ["local-triton", "local-portable", "conv2d"], "cuda", rounds=5,
                                    block_seconds=0.02, autocast_dtype=torch.bfloat16, log=lambda s: None)
        report["benchmark"] = {"fp32": {"records": fp32, "ratios": bench.ratio_rows(fp32, "local-triton")},
                               "bf16_autocast": {"records": bf16, "ratios": bench.ratio_rows(bf16, "local-triton")}}
        print("\nfp32 (TF32 off for all), fwd+bwd, localconv = local-triton:")
        print(bench.format_ratio_table(report["benchmark"]["fp32"]["ratios"]))
        print("\nbf16 autocast, fwd+bwd:")
        print(bench.format_ratio_table(report["benchmark"]["bf16_autocast"]["ratios"]))
        portable = bench.ratio_rows(fp32, "local-portable")
        print("\nfp32, localconv = local-portable:")
        print(bench.format_ratio_table(portable))
        report["benchmark"]["fp32"]["ratios_portable"] = portable
        print(f"(benchmarks done at {time.perf_counter() - started:.0f} s)")

    report["compile"] = compile_check()
    c = report["compile"]
    print(f"\ncompile: {'ok' if c['ok'] else 'FAIL'} worst rel err {c['worst_rel_error']:.2e}, first call "
          f"{c['first_call_seconds']:.1f} s, step eager {c['step_ms']['eager']:.3f} ms, "
          f"compiled {c['step_ms']['compiled']:.3f} ms")
    if args.profile:  # where a small layer's time goes (CPU launch overhead vs kernels): information only
        try:
            report["profile_local3-6x6-N128"] = profile_step("local3-6x6-N128")
            print("\nprofile of 10 local-triton steps, local3-6x6-N128:\n" + report["profile_local3-6x6-N128"])
        except Exception as exc:  # noqa: BLE001
            print(f"profile failed: {exc!r}")
    report["seconds"] = time.perf_counter() - started
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    if args.tune:  # after the report is safely written
        report["tune"] = tune(["local3-8x8-N512", "local3-6x6-N128"])
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    ok = report["parity_ok"] and c["ok"]
    print(f"\n{'PASS' if ok else 'FAIL'} in {report['seconds']:.0f} s -> {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
