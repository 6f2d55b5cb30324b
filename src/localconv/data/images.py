"""Image files -> 8-bit RGB arrays: one function, :func:`prepare_image`, for datasets and ``predict``.

The rules (docs/data.md, "Images"):

* EXIF orientation is applied first (``ImageOps.exif_transpose``), in training data and in predict.
* Every mode is brought to 8-bit RGB by its real range: 16-bit (``I;16*``) and 32-bit integer
  (``I``, which Pillow uses for 16-bit data) as 0..65535 (divided by 257, rounded, clipped),
  float (``F``) as 0..1 (times 255, clipped; NaN -> 0), bilevel ``1`` as 0/255, grayscale
  copied to the three channels, CMYK / YCbCr / HSV by Pillow's conversion.
* Transparency (an alpha channel or a palette's transparent colour) is composited on black:
  ``rgb * alpha / 255``, so a fully transparent pixel is black whatever colour it hides.
* Size: ``resize="none"`` refuses an image that is not ``side`` x ``side``; ``"shorter-side"``
  scales the image so that its shorter side is ``side`` (Pillow bilinear, antialiased when
  shrinking), then crops the centre ``side`` x ``side`` square. A ``side`` x ``side`` image is
  never resampled, so both modes give identical arrays for it.
"""
from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from .files import MAX_IMAGE_BYTES, read_regular_file

# What Pillow raises for unreadable, truncated or hostile image data (struct.error, KeyError, ...:
# from malformed EXIF blocks).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, struct.error,
                  KeyError, IndexError, TypeError, ZeroDivisionError)

RESIZE_MODES = ("none", "shorter-side")
DEFAULT_RESIZE = "none"
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def _open_image(stream: io.BytesIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* would otherwise print for large photos given to predict.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(stream)
    except Image.UnidentifiedImageError:  # its message names Pillow's in-memory stream, not the file
        raise DataError(f"{name}: not a readable image (no image format recognized: not an image file?)") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from None


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.astype(np.uint8)[:, :, None], 3, axis=2)


def to_rgb(image: Image.Image) -> np.ndarray:
    """``image`` (any Pillow mode) -> uint8 [H, W, 3] by the rules of the module doc."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.float64)
        return _gray(np.clip(np.rint(values / 257.0), 0, 255))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return _gray(np.clip(np.rint(values * 255.0), 0, 255))
    if mode in ("L", "1"):
        return _gray(np.asarray(image.convert("L")))
    if mode in _WITH_ALPHA or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        composited = (rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255  # rounded rgb * alpha / 255
        return composited.astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _shorter_side(rgb: np.ndarray, side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = side / min(height, width)
    new_w, new_h = max(side, round(width * scale)), max(side, round(height * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    top, left = (new_h - side) // 2, (new_w - side) // 2
    return np.ascontiguousarray(resized[top:top + side, left:left + side])


def prepare_image(data: bytes, name: str, resize: str = DEFAULT_RESIZE, side: int = 32) -> np.ndarray:
    """Decode one image file's bytes to uint8 [side, side, 3] (HWC, RGB); the shared path of training and predict.

    ``name`` is used in error messages; problems raise :class:`DataError`.
    """
    if resize not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {resize!r}; choose from {', '.join(RESIZE_MODES)}")
    image = _open_image(io.BytesIO(data), name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = ImageOps.exif_transpose(image)
            if image.size != (side, side) and resize == "none":
                raise DataError(f"{name}: image is {image.size[0]}x{image.size[1]}, expected {side}x{side} "
                                f"(dataset images are not resized unless --resize shorter-side is given)")
            rgb = to_rgb(image)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: corrupt or truncated image ({exc})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise DataError(f"{name}: image has no pixels or an unsupported mode ({image.mode})")
    if rgb.shape[:2] != (side, side):
        rgb = _shorter_side(rgb, side)
    return rgb


def decode_dataset_image(data: bytes, name: str, side: int = 32, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """One dataset image from bytes to uint8 [side, side, 3] (HWC, RGB); see :func:`prepare_image`."""
    return prepare_image(data, name, resize, side)


def read_image(path: str | os.PathLike, size: int = 32, resize: str = "shorter-side") -> np.ndarray:
    """One image file (png/jpg/...) -> uint8 [3, size, size] RGB, prepared by :func:`prepare_image`.

    The default ``resize="shorter-side"`` is what ``predict`` uses: a ``size`` x ``size`` image is
    taken as it is (as in training), any other is scaled and centre-cropped the way training with
    ``--resize shorter-side`` does. Only regular files are read (a FIFO is refused, not waited on),
    at most :data:`~localconv.data.files.MAX_IMAGE_BYTES`. Problems raise :class:`DataError` naming the file.
    """
    name = os.fspath(path)
    data = read_regular_file(name, MAX_IMAGE_BYTES, "image file")
    return np.ascontiguousarray(prepare_image(data, name, resize, size).transpose(2, 0, 1))
