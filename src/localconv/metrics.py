"""The names and the printed form of the numbers every report shows.

One meaning per name, the same in the console, ``metrics.jsonl``, TensorBoard and ``compare``:

``loss/cross_entropy``  mean cross-entropy of the training batches (plain, without label smoothing or
                        weight decay): comparable between models and recipes.
``loss/total``          the objective the optimizer minimizes: the cost coefficient times the cross-entropy
                        as trained (label-smoothed in the ``fast`` recipe) plus every weight-decay term,
                        whether it is a loss term (TF models) or part of the update rule (cuda-convnet's
                        ``wc``, as ``wc * sum(W^2) / 2``). Models with more decayed weights have a higher
                        total at the same cross-entropy: rank models by cross-entropy or accuracy.

Accuracies (and predicted probabilities) are printed by :func:`format_accuracy` only ("82.25%").

This module imports nothing from localconv, so training, reports and the CLI can all use it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

LOSS_TOTAL = "loss/total"
LOSS_CROSS_ENTROPY = "loss/cross_entropy"
LOSS_KEYS = (LOSS_TOTAL, LOSS_CROSS_ENTROPY)
# metrics.jsonl written before the two names existed kept the total under "loss"
LEGACY_LOSS_KEYS = {LOSS_TOTAL: "loss"}


def format_accuracy(value: float | None, missing: str = "-") -> str:
    """An accuracy (a fraction in [0, 1]) as a percent with two decimals: ``0.8225 -> "82.25%"``; also
    used for predicted probabilities, so that every fraction a person reads looks the same."""
    if value is None or not math.isfinite(value):
        return missing
    return f"{100 * value:.2f}%"


def read_loss(record: Mapping[str, Any], key: str) -> float | None:
    """``record[key]`` for a loss name of :data:`LOSS_KEYS`, also from a record of an older metrics.jsonl
    (``"loss"`` there meant the total); ``None`` when the record does not have it."""
    if key in record:
        return float(record[key])
    legacy = LEGACY_LOSS_KEYS.get(key)
    if legacy is not None and legacy in record:
        return float(record[legacy])
    return None


def auto_interval(total_steps: int, cap: int, points: int = 20) -> int:
    """Steps between two step-level records: ``cap`` for long runs, shorter for short ones so that a
    run of a few dozen steps still gets about ``points`` records (at least 1 step)."""
    return max(1, min(cap, total_steps // points))
