"""Image-file decoding with Pillow: exact-size decoding for datasets, resizing for prediction."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

# What Pillow raises for unreadable, truncated or hostile image data.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


def _open_image(stream: io.BytesIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* would otherwise print for large photos given to predict.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(stream)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from None


def _to_rgb_array(image: Image.Image, name: str) -> np.ndarray:
    """Decode ``image`` to uint8 [H, W, 3]; grayscale / palette / alpha images are converted to RGB."""
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: corrupt or truncated image ({exc})") from None


def decode_dataset_image(data: bytes, name: str, side: int = 32) -> np.ndarray:
    """Decode one dataset image from bytes to uint8 [side, side, 3] (HWC, RGB).

    Training data is never resized: an image of any other size raises :class:`DataError`.
    """
    image = _open_image(io.BytesIO(data), name)
    if image.size != (side, side):
        raise DataError(f"{name}: image is {image.size[0]}x{image.size[1]}, expected {side}x{side} "
                        f"(dataset images are not resized)")
    return _to_rgb_array(image, name)


def read_image(path: str | os.PathLike, size: int = 32) -> np.ndarray:
    """One image file (png/jpg/...) -> uint8 [3, size, size] RGB.

    Images of another size are resized (bilinear, Pillow) to ``size`` x ``size``, without
    preserving the aspect ratio, so that arbitrary pictures can be given to a model for
    prediction. EXIF orientation is applied first. Unreadable files raise :class:`DataError`
    naming the file.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as exc:  # missing, unreadable, a directory ...
        raise DataError(f"{name}: cannot read image file ({exc.strerror or exc})") from None
    image = _open_image(io.BytesIO(data), name)
    try:
        image = ImageOps.exif_transpose(image)
        if image.size != (size, size):
            image = image.convert("RGB").resize((size, size), Image.BILINEAR)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: corrupt or truncated image ({exc})") from None
    return np.ascontiguousarray(_to_rgb_array(image, name).transpose(2, 0, 1))
