"""Where a training step's time goes, and what each way of running it buys.

    python benchmarks/step_profile.py --data DIR [--device cuda] [--models tf-tutorial,cc-11pct]
        [--modes eager,fused,graph,graph+compile] [--epochs 3] [--rounds 1] [--json OUT] [--smoke]

For each model (fast recipe, its default batch) and each step mode (``--step`` of ``localconv train``,
``+compile`` adds ``torch.compile``):

* throughput: ``Trainer.fit`` on the training set for ``--epochs`` epochs after the mode's one-time
  warm-up (compilation, graph capture; reported as ``warmup_s``); images/s is the median over the epochs
  after the first (and over ``--rounds`` rounds that alternate the modes' order), and ``speedup`` is
  against eager in the same run;
* parity (fp32, no TF32, deterministic cuDNN): the first 2 steps against eager, and the CUDA graph against
  the fused step over 10 steps across epoch boundaries; the largest relative weight difference
  (``||w_mode - w_ref|| / ||w_ref||`` over tensors) must stay below ``PARITY_TOL``;
* profile (eager and the fastest mode): ``torch.profiler`` over ``PROFILE_STEPS`` steps: wall time per step,
  device-busy time per step (sum of kernel times), kernel launches per step and the kernels that take the
  most time. Wall >> busy means the step waits on the host (launch-bound); wall ~ busy means the kernels
  themselves bound it, and the table says which.

``best_step`` in the JSON is, per model, the fastest mode that passed parity; ``gpu_suite.sh`` trains
with it. ``--smoke`` runs tiny CPU settings (CI checks that the script works).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import localconv
from localconv.data import load_cifar10
from localconv.data.loader import select_splits
from localconv.training.engine import Callback, Trainer, TrainOptions

PARITY_TOL = 1e-3  # fp32, no TF32, deterministic cuDNN: rounding is ~1e-6; a wrong update is O(1)
PROFILE_WAIT, PROFILE_STEPS = 5, 20


def parse_mode(mode: str) -> tuple[str, bool]:
    step, _, extra = mode.partition("+")
    if step not in ("eager", "fused", "graph") or extra not in ("", "compile"):
        raise SystemExit(f"--modes: unknown mode {mode!r} (STEP or STEP+compile, STEP in eager/fused/graph)")
    return step, extra == "compile"


def make_trainer(name: str, mode: str, splits, run_dir: Path, device: str, epochs: float,  # noqa: ANN001
                 batch_size: int | None, amp: bool | None = None, callbacks=()) -> Trainer:  # noqa: ANN001
    step, compile_model = parse_mode(mode)
    torch.manual_seed(0)
    model = localconv.create_model(name)
    options = TrainOptions(recipe="fast", epochs=epochs, seed=0, device=device, progress=False, eval_every=0,
                           checkpoint_every=10**6, log_every=0, compile=compile_model, step=step,
                           batch_size=batch_size, amp=amp)
    return Trainer(model, splits, run_dir, options, callbacks=callbacks)


def throughput(name: str, mode: str, splits, device: str, epochs: float, batch_size: int | None) -> dict:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(name, mode, splits, Path(tmp) / "run", device, epochs, batch_size)
        warmup_s = trainer.warm_up()
        state = trainer.fit()
    rates = [r["images_per_s"] for r in state.history[1:]] or [state.history[0]["images_per_s"]]
    rate = statistics.median(rates)
    return {"images_per_s": rate, "epoch_s": trainer.full_train_size / rate, "warmup_s": warmup_s,
            "step": trainer.step_mode, "batch_size": trainer.batch_size,
            "step_ms": 1000 * trainer.local_batch / rate}


def median_round(runs: list[dict]) -> dict:
    """The round with the median images/s, with every round's figure."""
    good = sorted((r for r in runs if "images_per_s" in r), key=lambda r: r["images_per_s"])
    if not good:
        return runs[-1]
    return dict(good[(len(good) - 1) // 2], rounds=[r["images_per_s"] for r in runs if "images_per_s" in r])


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in trainer.model.state_dict().items()}


def worst_difference(w: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[float, str]:
    diffs = {k: ((w[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-12)).item() for k in ref}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


@contextlib.contextmanager
def exact_fp32():
    """fp32 without TF32 and with deterministic cuDNN algorithms, for comparisons."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic) = flags


def parity(name: str, modes: list[str], data, device: str, batch_size: int) -> dict:  # noqa: ANN001
    """Each mode against eager over the first 2 steps (cc-11pct's tiny conv1 init makes longer comparisons
    chaotic: a 1e-6 change of one weight moves conv1 by ~10% within 5 steps on the CPU), and the CUDA graph
    against the fused step it captured over 10 steps that cross two epoch boundaries."""
    splits = select_splits(data.train_images, data.train_labels, data.test_images, data.test_labels,
                           limit_train=4 * batch_size, limit_test=200)
    results: dict[str, dict] = {}

    def run(mode: str, steps: int, tmp: str) -> dict[str, torch.Tensor]:
        trainer = make_trainer(name, mode, splits, Path(tmp) / f"{mode.replace('+', '_')}-{steps}", device, 1.0,
                               batch_size, amp=False)
        trainer.total_steps = steps
        trainer.fit()
        return weights(trainer)

    with tempfile.TemporaryDirectory() as tmp, exact_fp32():
        ref = run("eager", 2, tmp)
        for mode in modes:
            try:
                diff, worst = worst_difference(run(mode, 2, tmp), ref)
                results[mode] = {"ok": diff <= PARITY_TOL, "max_rel_diff": diff, "worst_tensor": worst}
                if mode == "graph" and "fused" in modes:  # (graph+compile: the same capture, 2 more compilations)
                    diff10, worst10 = worst_difference(run("graph", 10, tmp), run("fused", 10, tmp))
                    results[mode].update(ok=results[mode]["ok"] and diff10 <= PARITY_TOL,
                                         max_rel_diff_vs_fused_10_steps=diff10, worst_tensor_10_steps=worst10)
            except Exception as exc:  # noqa: BLE001 -- a mode that cannot run is a result, not a crash
                results[mode] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return results


class ProfilerSteps(Callback):
    """Advances a torch.profiler schedule after every optimizer step."""

    def __init__(self, profiler: torch.profiler.profile) -> None:
        self.profiler = profiler
        self.marks: list[float] = []

    def after_step(self, trainer: Trainer, loss: torch.Tensor) -> None:  # noqa: ARG002
        if trainer.state.step in (PROFILE_WAIT, PROFILE_WAIT + PROFILE_STEPS):
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())
        self.profiler.step()


def profile(name: str, mode: str, splits, device: str, batch_size: int | None, top: int = 12) -> dict:  # noqa: ANN001
    on_gpu = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    schedule = torch.profiler.schedule(wait=PROFILE_WAIT - 1, warmup=1, active=PROFILE_STEPS, repeat=1)
    with tempfile.TemporaryDirectory() as tmp, torch.profiler.profile(activities=activities,
                                                                      schedule=schedule) as prof:
        steps_cb = ProfilerSteps(prof)
        trainer = make_trainer(name, mode, splits, Path(tmp) / "run", device, 1.0, batch_size, callbacks=[steps_cb])
        trainer.total_steps = PROFILE_WAIT + PROFILE_STEPS
        trainer.warm_up()
        trainer.fit()
    events = prof.key_averages()

    def device_time(e) -> float:  # noqa: ANN001 -- microseconds; the attribute was renamed in torch 2.4
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)

    if on_gpu:
        kernels = [e for e in events if device_time(e) > 0 and "DeviceType.CUDA" in str(getattr(e, "device_type", ""))]
        kernels = kernels or [e for e in events if device_time(e) > 0]
        busy_us = sum(device_time(e) for e in kernels)
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch",
                                                            "cudaLaunchKernelExC"))
        ranked = sorted(kernels, key=device_time, reverse=True)[:top]
        table = [{"name": e.key[:120], "ms_per_step": device_time(e) / 1000 / PROFILE_STEPS,
                  "share": device_time(e) / busy_us if busy_us else 0.0, "calls_per_step": e.count / PROFILE_STEPS}
                 for e in ranked]
    else:  # CPU: the ops' own CPU time
        ops = [e for e in events if e.key.startswith("aten::")]
        busy_us = sum(e.self_cpu_time_total for e in ops)
        launches = 0
        ranked = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        table = [{"name": e.key, "ms_per_step": e.self_cpu_time_total / 1000 / PROFILE_STEPS,
                  "share": e.self_cpu_time_total / busy_us if busy_us else 0.0, "calls_per_step": e.count / PROFILE_STEPS}
                 for e in ranked]
    wall_ms = 1000 * (steps_cb.marks[1] - steps_cb.marks[0]) / PROFILE_STEPS if len(steps_cb.marks) == 2 else None
    busy_ms = busy_us / 1000 / PROFILE_STEPS
    return {"mode": mode, "steps": PROFILE_STEPS, "wall_ms_per_step_profiled": wall_ms, "busy_ms_per_step": busy_ms,
            "launches_per_step": launches / PROFILE_STEPS, "top": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="tf-tutorial,cc-11pct")
    p.add_argument("--modes", default=None, help="default: eager,fused,graph,graph+compile on CUDA; eager,fused on CPU")
    p.add_argument("--compile-models", default=None,
                   help="models that get the +compile modes (default: all; compilation takes most of a GPU run)")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--rounds", type=int, default=1, help="throughput rounds per mode, alternating order; median")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script works")
    args = p.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    on_gpu = torch.device(device).type == "cuda"
    modes = (args.modes or ("eager,fused,graph,graph+compile" if on_gpu else "eager,fused")).split(",")
    for m in modes:
        parse_mode(m)
    if args.smoke:
        args.limit_train, args.epochs, args.batch_size = args.limit_train or 256, 2, args.batch_size or 64
    data = load_cifar10(args.data, progress=False)
    splits = select_splits(data.train_images, data.train_labels, data.test_images, data.test_labels,
                           limit_train=args.limit_train, limit_test=1000)  # only the final evaluation uses it
    out: dict = {"data": data.source, "device": torch.cuda.get_device_name() if on_gpu else "cpu",
                 "torch": torch.__version__, "models": {}, "best_step": {}}

    def save() -> None:
        if args.json:  # after every piece, so that a time-out keeps what was measured
            args.json.write_text(json.dumps(out, indent=1))

    for name in args.models.split(","):
        entry: dict = {"throughput": {}, "parity": {}, "profile": []}
        out["models"][name] = entry
        compiled_ok = args.compile_models is None or name in args.compile_models.split(",")
        modes_here = [m for m in modes if compiled_ok or not m.endswith("+compile")]
        entry["parity"] = parity(name, modes_here, data, device, args.batch_size or (512 if on_gpu else 256))
        save()
        passed = [m for m in modes_here if entry["parity"].get(m, {}).get("ok", False)]
        rounds: dict[str, list[dict]] = {m: [] for m in passed}
        for r in range(args.rounds):  # alternate the order: a noisy machine drifts between measurements
            for mode in (passed if r % 2 == 0 else passed[::-1]):
                if rounds[mode] and "error" in rounds[mode][-1]:
                    continue
                try:
                    rounds[mode].append(throughput(name, mode, splits, device, args.epochs, args.batch_size))
                except Exception as exc:  # noqa: BLE001
                    rounds[mode].append({"error": f"{type(exc).__name__}: {exc}"})
                entry["throughput"][mode] = median_round(rounds[mode])
                save()
        rates = {m: r["images_per_s"] for m, r in entry["throughput"].items() if "images_per_s" in r}
        base = rates.get("eager")
        for m, r in entry["throughput"].items():
            if base and "images_per_s" in r:
                r["speedup"] = r["images_per_s"] / base
        best = max(rates, key=rates.get) if rates else "eager"
        out["best_step"][name] = best
        for m in sorted(rates):
            print(f"{name:<12} {m:<14} {rates[m]:>9.0f} img/s  epoch {entry['throughput'][m]['epoch_s']:.3f} s  "
                  f"warm-up {entry['throughput'][m]['warmup_s']:.1f} s  x{rates[m] / base if base else 0:.2f} "
                  f"vs eager  parity {entry['parity'][m]['max_rel_diff']:.1e}", flush=True)
        if not args.no_profile:
            for mode in dict.fromkeys(["eager", best]):
                try:
                    prof = profile(name, mode, splits, device, args.batch_size)
                except Exception as exc:  # noqa: BLE001
                    prof = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
                entry["profile"].append(prof)
                save()
                if "error" in prof:
                    print(f"{name} profile {mode}: {prof['error']}", flush=True)
                    continue
                print(f"{name} profile {mode}: wall {prof['wall_ms_per_step_profiled'] or float('nan'):.2f} ms/step "
                      f"(profiled), device busy {prof['busy_ms_per_step']:.2f} ms/step, "
                      f"{prof['launches_per_step']:.0f} launches/step; top: "
                      + "; ".join(f"{t['name'][:40]} {t['share']:.0%}" for t in prof["top"][:4]), flush=True)
        save()
    print("best step mode per model:", json.dumps(out["best_step"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
