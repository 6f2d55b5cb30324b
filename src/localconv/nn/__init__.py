"""Layers (``torch.nn`` style): the locally connected layers and cuda-convnet/TF ops."""
from .local import (LazyLocallyConnected1d, LazyLocallyConnected2d, LazyLocallyConnected3d, LocallyConnected1d,
                    LocallyConnected2d, LocallyConnected3d)

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "LocallyConnected3d", "LazyLocallyConnected1d",
           "LazyLocallyConnected2d", "LazyLocallyConnected3d"]
