"""Evaluation on device-resident uint8 images: precision@1, per-class accuracy, confusion, probabilities."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..data.augment import TEN_VIEWS, eval_batch
from ..models.base import Classifier

VIEW_SETS = {"single": [("centre", False)], "flip": [("centre", False), ("centre", True)], "multiview": TEN_VIEWS}


@dataclass
class EvalResult:
    accuracy: float
    n: int
    probs: torch.Tensor       # float [n, classes] (averaged over views), on CPU
    labels: torch.Tensor      # int64 [n], on CPU
    views: str

    @property
    def predictions(self) -> torch.Tensor:
        return self.probs.argmax(1)

    def confusion(self, num_classes: int | None = None) -> torch.Tensor:
        k = num_classes or self.probs.shape[1]
        idx = self.labels * k + self.predictions
        return torch.bincount(idx, minlength=k * k).reshape(k, k)

    def per_class_accuracy(self) -> list[float]:
        cm = self.confusion().double()
        return (cm.diag() / cm.sum(1).clamp_min(1)).tolist()


def progress_bar(total: int, desc: str | None) -> Any:
    """A transient tqdm bar over ``total`` images (a no-op context when ``desc`` is None): it sits below a
    training bar while an evaluation runs, then disappears."""
    if desc is None:
        return nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


@torch.no_grad()
def predict_probs(model: Classifier, images: torch.Tensor, views: str = "single", batch_size: int = 1000,
                  amp: bool = False, progress: str | None = None) -> torch.Tensor:
    """Softmax probabilities averaged over the test views (``single``, ``flip`` or 10-view ``multiview``);
    ``progress``: the label of a progress bar shown while it runs (None: no bar)."""
    model.eval()
    with progress_bar(images.shape[0], progress) as bar:
        if bar is not None:  # about ten updates, so that the bar moves (per-image results do not depend on it)
            batch_size = min(batch_size, max(250, -(-images.shape[0] // 10)))
        return _predict_probs(model, images, views, batch_size, amp, bar)


def _predict_probs(model: Classifier, images: torch.Tensor, views: str, batch_size: int, amp: bool,
                   bar: Any) -> torch.Tensor:
    spec = model.input_spec
    mean = getattr(model, "pixel_mean", None) if model.needs_pixel_mean() else None
    out = []
    device_type = images.device.type
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size]
        acc = None
        for view, flip in VIEW_SETS[views]:
            x = eval_batch(chunk, spec, mean, view=view, flip=flip)
            x = x.contiguous(memory_format=torch.channels_last)  # the convolutions' fast layout on CPU and GPU
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
                p = model.predict_proba(x).float()
            acc = p if acc is None else acc + p
        out.append(acc / len(VIEW_SETS[views]))
        if bar is not None:
            bar.update(chunk.shape[0])
    return torch.cat(out).cpu() if out else torch.zeros(0, model.num_classes)


def evaluate(model: Classifier, images: torch.Tensor, labels: torch.Tensor, views: str = "single",
             batch_size: int = 1000, amp: bool = False, progress: str | None = None) -> EvalResult:
    """Precision@1 of ``model`` on uint8 ``images`` [N,3,32,32] (on the model's device); ``progress``: the
    label of a progress bar (None: none)."""
    was_training = model.training
    probs = predict_probs(model, images, views, batch_size, amp, progress)
    model.train(was_training)
    labels = labels.cpu()
    n = int(labels.numel())
    acc = float((probs.argmax(1) == labels).double().mean()) if n else float("nan")
    return EvalResult(acc, n, probs, labels, views)
