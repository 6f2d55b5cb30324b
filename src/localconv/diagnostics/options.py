"""The doctor's options, in a module without torch: ``localconv doctor --help`` shows their defaults."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import LocalconvError


@dataclass
class DoctorOptions:
    """How long and on what the doctor trains (defaults: well under a minute on two CPU cores for tf-tutorial)."""

    steps: int = 200
    batch_size: int = 32
    limit_train: int = 5000      # training images used (a subset keeps the data on the device small)
    val_images: int = 1000       # held out from the training set to report an accuracy
    every: int = 5               # monitor one step in ``every``
    dense_start: int = 10        # and each of the first steps
    recipe: str = "original"
    lr: float | None = None
    lr_scale: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0             # torch CPU threads during the run (0: as they are); the CLI picks (idle_cores)
    progress: bool = False

    def validate(self) -> None:
        for name in ("steps", "batch_size", "limit_train", "every"):
            if getattr(self, name) < 1:
                raise LocalconvError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.val_images < 0:
            raise LocalconvError(f"--val-images must be >= 0, got {self.val_images}")
        if self.threads < 0:
            raise LocalconvError(f"--threads must be >= 0, got {self.threads}")
