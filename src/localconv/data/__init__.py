"""CIFAR-10 data: readers for the accepted layouts, the decoded-image cache and the download.

Public API: :class:`CifarData`, :data:`CIFAR10_CLASSES`, :func:`load_cifar10`,
:func:`read_image`, :func:`default_cache_dir`. See docs/data.md.
"""
from .cache import default_cache_dir
from .cifar10 import load_cifar10
from .cifar_data import CIFAR10_CLASSES, CifarData
from .images import read_image

__all__ = ["CIFAR10_CLASSES", "CifarData", "default_cache_dir", "load_cifar10", "read_image"]
