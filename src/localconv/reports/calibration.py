"""Calibration of predicted probabilities: expected calibration error and temperature scaling."""
from __future__ import annotations

import torch


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each (for a reliability diagram)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # bin i holds confidences in (edges[i], edges[i+1]]; confidence 0 cannot occur for a softmax over >= 1 class
    idx = torch.bucketize(conf.double(), edges[1:-1], right=False).clamp_(0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        mask = idx == i
        n = int(mask.sum())
        bins.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": n,
                     "confidence": float(conf[mask].double().mean()) if n else float("nan"),
                     "accuracy": float(correct[mask].mean()) if n else float("nan")})
    return bins


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    total = probs.shape[0]
    if total == 0:
        return float("nan")
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
               for b in calibration_bins(probs, labels, n_bins) if b["count"])


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 minimizing the NLL of softmax(logits / T) (Guo et al., 2017)."""
    logits, labels = logits.detach().double(), labels.detach()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())
