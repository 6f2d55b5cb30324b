"""Which arithmetic a run trains and evaluates in (torch-free: ``eval``'s parser and tests use it too).

The original recipes are float32 on every device, as TensorFlow's tutorial and cuda-convnet were; bf16
autocast is a choice of the fast recipe where the device computes bf16 natively: CUDA GPUs, and CPUs with
AMX or AVX512-BF16 (on such a CPU it trained tf-tutorial 1.9x faster with the same accuracy, BENCHMARKS.md
"Fast recipe on the CPU"; elsewhere bf16 is emulated and slower than float32). An explicit ``--amp`` /
``--no-amp`` always wins and is recorded in run.json (``options.amp`` as given, ``amp`` as resolved).
"""
from __future__ import annotations

from typing import Any


def resolve_amp(requested: bool | None, recipe: str, device_type: str, native_bf16: bool = False) -> bool:
    """bf16 autocast for training: what was asked, else on for the fast recipe on CUDA and on a CPU whose
    ``native_bf16`` is true (see :func:`localconv.training.engine.native_bf16`)."""
    if requested is not None:
        return bool(requested)
    return recipe != "original" and (device_type == "cuda" or native_bf16)


def eval_amp(requested: bool | None, meta: dict[str, Any], device_type: str, native_bf16: bool = False) -> bool:
    """bf16 autocast for ``localconv eval``: what was asked, else the run's own training setting (run.json
    ``amp``; runs written before it was recorded: resolved from their options) where this device computes
    bf16 natively (CUDA, or a CPU with ``native_bf16``), and float32 on any other CPU."""
    if requested is not None:
        return bool(requested)
    if device_type != "cuda" and not native_bf16:
        return False
    recorded = meta.get("amp")
    if isinstance(recorded, bool):
        return recorded
    if device_type != "cuda":  # runs written before run.json recorded "amp" trained in bf16 only on CUDA
        return False
    options = meta.get("options") or {}
    return resolve_amp(options.get("amp"), str(options.get("recipe") or "original"), "cuda")
