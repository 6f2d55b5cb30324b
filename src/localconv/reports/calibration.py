"""Calibration of predicted probabilities: expected calibration error and temperature scaling.

A model is calibrated when, of the images it labels with confidence p, a fraction p is right.
:func:`expected_calibration_error` measures the gap over equal-width confidence bins
(:func:`calibration_bins`, also what a reliability diagram draws); :func:`fit_temperature`
finds the single temperature T that makes ``softmax(logits / T)`` best calibrated on held-out
data (Guo et al., 2017, "On calibration of modern neural networks"). T changes no prediction's
rank, only its confidence; ``Classifier.predict_proba`` divides by the model's ``temperature``.
"""
from __future__ import annotations

import torch

from ..errors import LocalconvError


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
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[0] != labels.shape[0]:
        raise LocalconvError(f"temperature fitting needs [N, classes] logits with N >= 1 labels, got "
                             f"{list(logits.shape)} and {list(labels.shape)}")
    logits, labels = logits.detach().double().cpu(), labels.detach().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


@torch.no_grad()
def centre_view_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's logits (float, on the CPU) for the centre view of uint8 ``images`` [N, 3, 32, 32]."""
    from ..data.augment import eval_batch

    was_training = model.training
    model.eval()
    spec = model.input_spec
    mean = getattr(model, "pixel_mean", None) if model.needs_pixel_mean() else None
    out = [model.output_logits(model(eval_batch(images[i:i + batch_size], spec, mean))).cpu()
           for i in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.num_classes)
