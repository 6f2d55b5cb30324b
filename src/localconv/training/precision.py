"""Which arithmetic a run trains and evaluates in (torch-free: ``eval``'s parser and tests use it too).

The original recipes are float32 on every device, as TensorFlow's tutorial and cuda-convnet were; bf16
autocast is a choice of the fast recipe on CUDA. An explicit ``--amp`` / ``--no-amp`` always wins and is
recorded in run.json (``options.amp`` as given, ``amp`` as resolved).
"""
from __future__ import annotations

from typing import Any


def resolve_amp(requested: bool | None, recipe: str, device_type: str) -> bool:
    """bf16 autocast for training: what was asked, else on for the fast recipe on CUDA only."""
    if requested is not None:
        return bool(requested)
    return device_type == "cuda" and recipe != "original"


def eval_amp(requested: bool | None, meta: dict[str, Any], device_type: str) -> bool:
    """bf16 autocast for ``localconv eval``: what was asked, else off on the CPU and, on CUDA, the run's own
    training setting (run.json ``amp``; runs written before it was recorded: resolved from their options)."""
    if requested is not None:
        return bool(requested)
    if device_type != "cuda":
        return False
    recorded = meta.get("amp")
    if isinstance(recorded, bool):
        return recorded
    options = meta.get("options") or {}
    return resolve_amp(options.get("amp"), str(options.get("recipe") or "original"), "cuda")
