"""Channels: every image is read as 8-bit RGB (images.prepare_image); a model may take fewer.

Grayscale files (mode ``L``, ``I;16``, ...) are read as RGB with three equal channels, so a tree of them
trains a 3-channel model on copies of one channel. :func:`equal_channels` finds such data (``train`` says
so in its first line), and :func:`to_channels` gives a 1-channel model (``--in-chans 1``, the tf-tutorial
family) one channel: the luma of ITU-R 601-2 that Pillow's ``convert("L")`` uses, which for three equal
channels is that channel exactly.
"""
from __future__ import annotations

import dataclasses
from typing import TypeVar

import numpy as np

from ..errors import DataError

# Pillow's "L" conversion: L = R * 299/1000 + G * 587/1000 + B * 114/1000 (rounded)
_LUMA = (299, 587, 114)

T = TypeVar("T")


def equal_channels(images: np.ndarray) -> bool:
    """Whether uint8 ``[N, 3, H, W]`` images are gray: their three channels are equal in every pixel."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        return False
    return bool(np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 1], images[:, 2]))


def to_channels(images: np.ndarray, in_chans: int, where: str = "images") -> np.ndarray:
    """uint8 ``[N, 3, H, W]`` RGB images as ``in_chans`` channels: 3 as they are, 1 as their luma."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"{where}: expected RGB images [N, 3, H, W], got {list(images.shape)}")
    if in_chans == 3:
        return images
    if in_chans == 1:
        r, g, b = (images[:, c:c + 1].astype(np.uint32) for c in range(3))
        luma = (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2] + 500) // 1000
        return luma.astype(np.uint8)
    raise DataError(f"{where}: a model of {in_chans} input channels cannot read RGB images (use 1 or 3)")


def data_with_channels(data: T, in_chans: int) -> T:
    """A :class:`~localconv.data.cifar_data.CifarData` whose train and test images have ``in_chans`` channels
    (the same object when that is 3)."""
    if in_chans == 3:
        return data
    source = getattr(data, "source", "data")
    train = to_channels(data.train_images, in_chans, source)  # type: ignore[attr-defined]
    test = to_channels(data.test_images, in_chans, source)  # type: ignore[attr-defined]
    return dataclasses.replace(data, train_images=train, test_images=test)  # type: ignore[type-var]
