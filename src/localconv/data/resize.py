"""``resize_images``: a batch of any size to the 32x32 images the models take, as image files are prepared.

``predict`` and ``train --resize shorter-side`` scale an image file's shorter side to 32 (Pillow bilinear,
antialiased when shrinking) and keep the centre 32x32 (images.prepare_image). This is the same operation on
images already in memory, so that ``model.predict_proba(resize_images(batch_64x64))`` gives what ``predict``
gives for the same pictures saved as files.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError
from .images import _shorter_side


class ResizeValueError(DataError, ValueError):
    """Bad input to :func:`resize_images`: a ``ValueError`` for Python callers, like the models' own."""


def _resize_one(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 [C, H, W] -> [C, side, side]; RGB as one Pillow image (exactly as files are), other counts per channel."""
    if image.shape[1:] == (side, side):
        return image  # never resampled, as a file of that size is not
    if image.shape[0] == 3:
        return _shorter_side(np.ascontiguousarray(image.transpose(1, 2, 0)), side).transpose(2, 0, 1)
    return np.stack([_shorter_side(np.ascontiguousarray(channel), side) for channel in image])


def resize_images(images: Any, side: int = 32) -> Any:
    """uint8 images ``[N, C, H, W]`` (NCHW, 0..255; or one ``[C, H, W]``), a torch tensor or a numpy array, of any
    size -> ``[N, C, side, side]`` of the same kind (a tensor stays on its device): the shorter side scaled to
    ``side``, then the centre ``side`` x ``side`` kept, exactly as ``predict`` prepares an image file."""
    as_tensor = type(images).__module__.startswith("torch")
    array = images.detach().cpu().numpy() if as_tensor else np.asarray(images)
    if array.dtype != np.uint8:
        raise ResizeValueError(f"resize_images takes uint8 images (0..255), got {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or 0 in array.shape:
        raise ResizeValueError(f"resize_images takes images [N, C, H, W] (NCHW), got {list(array.shape)}")
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ResizeValueError(f"resize_images: side must be a whole number >= 1, got {side!r}")
    out = np.stack([_resize_one(image, side) for image in array])
    if not as_tensor:
        return out
    import torch

    return torch.from_numpy(np.ascontiguousarray(out)).to(images.device)
