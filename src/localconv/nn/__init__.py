"""Layers (``torch.nn`` style): the locally connected layer and cuda-convnet/TF ops."""
from .local import LocallyConnected2d

__all__ = ["LocallyConnected2d"]
