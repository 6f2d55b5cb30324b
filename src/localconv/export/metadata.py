"""The side-car JSON of an exported classifier (``MODEL.onnx.json``, ``MODEL.pt2.json``): what a caller must
know to feed the file and read its outputs. No torch here: :mod:`.onnx_runtime` reads it for deployment.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import LocalconvError

EXPORT_FORMAT = "localconv-export/1"
FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}  # --format -> file suffix
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")


def sidecar_path(model_file: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(model_file)
    return path.with_name(path.name + ".json")


def describe(pretrained_cfg: dict[str, Any], classes: list[str], temperature: float, source: dict[str, Any],
             export_format: str) -> dict[str, Any]:
    """The side-car record of one export (``pretrained_cfg`` of the exported model, its classes)."""
    chans, side = pretrained_cfg["source_size"][0], pretrained_cfg["source_size"][1]
    return {
        "format": EXPORT_FORMAT,
        "export_format": export_format,
        "architecture": pretrained_cfg["architecture"],
        "classes": list(classes),
        "input": {
            "name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "shape": ["batch", chans, side, side],
            # a --in-chans 1 run was trained on the luma of its images (data/channels.py): say how to make it
            "channels": "RGB" if chans == 3 else "luma of RGB, (299 R + 587 G + 114 B + 500) // 1000 (Pillow's "
                        "convert('L'))" if chans == 1 else f"{chans} channel(s)", "range": "0..255",
            "image_files": f"EXIF orientation applied, the shorter side scaled to {side} (bilinear), the centre "
                           f"{side}x{side} kept, as `localconv predict` prepares them",
        },
        "preprocessing_in_graph": {
            "crop": pretrained_cfg["crop"], "crop_mode": pretrained_cfg["crop_mode"],
            "normalization": pretrained_cfg["normalization"],
            "note": "the graph takes raw uint8 images and crops and normalizes them itself, as `localconv eval` "
                    "does; feed it no float or pre-normalized images",
        },
        "outputs": {
            "logits": "float32 [batch, classes]",
            "probabilities": "float32 [batch, classes]: softmax(logits / temperature)",
        },
        "temperature": float(temperature),
        "source": source,
    }


def write_sidecar(path: Path, record: dict[str, Any], write_text: Any) -> None:
    """Write ``record`` as JSON with ``write_text(path, text)`` (an atomic writer)."""
    write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_sidecar(model_file: str | os.PathLike) -> dict[str, Any]:
    """The side-car record of an exported file, checked enough to be used; a one-line error otherwise."""
    path = sidecar_path(model_file)
    if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
        raise LocalconvError(f"{path}: not a regular file")
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalconvError(f"{path}: missing; an exported model is used with the JSON that `localconv export` "
                             "wrote beside it (classes, input layout)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LocalconvError(f"{path}: unreadable export metadata ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise LocalconvError(f"{path}: not a {EXPORT_FORMAT} file")
    classes = record.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise LocalconvError(f"{path}: field 'classes' must list 2 or more class names")
    shape = record.get("input", {}).get("shape") if isinstance(record.get("input"), dict) else None
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape[1:])):
        raise LocalconvError(f"{path}: field 'input.shape' must be [\"batch\", C, H, W]")
    temperature = record.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < 1e3:
        raise LocalconvError(f"{path}: field 'temperature' must be a number > 0, got {temperature!r}")
    digest = record.get("file_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise LocalconvError(f"{path}: field 'file_sha256' must be a sha256 hex digest")
    return record


def mismatched_field(sidecar: dict[str, Any], embedded: dict[str, Any]) -> str | None:
    """The first field in which a side-car differs from the description stored inside the model file (the
    side-car alone adds the export check and the file's checksum), or None."""
    for key in sorted(set(sidecar) | set(embedded)):
        if key not in ("check", "file_sha256") and sidecar.get(key) != embedded.get(key):
            return key
    return None
