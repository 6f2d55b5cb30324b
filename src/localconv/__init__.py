"""localconv: classic CIFAR-10 convnets with locally connected layers, trained faithfully and fast."""
from .errors import LocalconvError
from .models import create_model, list_models
from .nn import LocallyConnected2d

__version__ = "0.1.0"


def load_run(path, which: str = "ema", device: str = "cpu"):  # noqa: ANN001, ANN201 (documented in training.checkpoint)
    """Load a trained run folder: returns ``(model, metadata)``; ``which`` = 'ema' or 'raw' weights."""
    from .training.checkpoint import load_run as _load_run

    return _load_run(path, which=which, device=device)


__all__ = ["LocallyConnected2d", "LocalconvError", "create_model", "list_models", "load_run", "__version__"]
