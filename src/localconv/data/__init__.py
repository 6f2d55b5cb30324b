"""CIFAR-10 / CIFAR-100 data: readers for the accepted layouts, the decoded-image cache and the download.

Public API: :class:`CifarData` (``classes``, ``num_classes``), :data:`CIFAR10_CLASSES`,
:func:`load_cifar10`, :func:`read_image` and :func:`prepare_image` (the one image preparation
of training and predict), :func:`default_cache_dir`. See docs/data.md.
"""
from .cache import default_cache_dir
from .cifar10 import load_cifar10
from .cifar_data import CIFAR10_CLASSES, CifarData
from .images import RESIZE_MODES, prepare_image, read_image

__all__ = ["CIFAR10_CLASSES", "RESIZE_MODES", "CifarData", "default_cache_dir", "load_cifar10", "prepare_image",
           "read_image"]
