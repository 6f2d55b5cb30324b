"""CIFAR-10 / CIFAR-100 data: readers for the accepted layouts, the decoded-image cache and the download.

Public API: :class:`CifarData` (``classes``, ``num_classes``), :data:`CIFAR10_CLASSES`,
:func:`load_cifar10` (and :func:`load_training_subset`), :func:`read_image` and :func:`prepare_image` (the one image preparation
of training and predict), :func:`default_cache_dir`. See docs/data.md.
"""
from .cache import default_cache_dir
from .cifar10 import load_cifar10, load_training_subset
from .cifar_data import CIFAR10_CLASSES, CifarData
from .images import RESIZE_MODES, prepare_image, read_image
from .subset import TrainingSubset

__all__ = ["CIFAR10_CLASSES", "RESIZE_MODES", "CifarData", "TrainingSubset", "default_cache_dir", "load_cifar10",
           "load_training_subset", "prepare_image", "read_image"]
