"""Run an exported ONNX classifier with onnxruntime and numpy: deployment without torch.

Nothing here imports torch (tests/test_export.py runs it with torch blocked). The file takes raw uint8
images ``[N, C, 32, 32]`` and crops and normalizes them itself (see :mod:`.exporter`); its side-car JSON
(:mod:`.metadata`) names the classes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalconvError
from .metadata import INPUT_NAME, mismatched_field, read_sidecar, sidecar_path


class OnnxClassifier:
    """An exported classifier: ``predict_proba(uint8 [N, C, 32, 32]) -> float [N, classes]``."""

    def __init__(self, path: str | os.PathLike) -> None:
        from ..optional_deps import require

        require("onnxruntime", f"predicting with {path}", "onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise LocalconvError(f"{self.path}: no such ONNX file")
        self.metadata: dict[str, Any] = read_sidecar(self.path)
        self.classes: list[str] = list(self.metadata["classes"])
        self.input_shape = tuple(self.metadata["input"]["shape"][1:])
        data = self.path.read_bytes()
        digest = self.metadata.get("file_sha256")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise LocalconvError(f"{self.path}: checksum mismatch with {sidecar_path(self.path).name} (file corrupt "
                                 "or modified after export)")
        try:
            self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for damaged files
            raise LocalconvError(f"{self.path}: not a loadable ONNX model ({type(exc).__name__})") from None
        # the side-car must describe this very file: its classes name the outputs, its shape the input
        stored = self.session.get_modelmeta().custom_metadata_map.get("localconv")
        try:
            embedded = json.loads(stored) if stored is not None else None
        except ValueError:
            embedded = None
        if not isinstance(embedded, dict):
            raise LocalconvError(f"{self.path}: holds no localconv metadata; not a file of `localconv export`")
        field = mismatched_field(self.metadata, embedded)
        if field is not None:
            raise LocalconvError(f"{sidecar_path(self.path)}: field {field!r} differs from the metadata inside "
                                 f"{self.path.name}; the side-car belongs to another export (export again)")

    def predict_proba(self, images: np.ndarray, views: str = "single") -> np.ndarray:
        """Class probabilities of uint8 images ``[N, C, H, W]``; ``views``: the centre crop (single) or the
        mean over it and its mirror (flip; the mirror of the centre crop is the centre crop of the mirrored
        image). The 10-view ``multiview`` needs corner crops that the file does not contain."""
        if views not in ("single", "flip"):
            raise LocalconvError(f"--views {views}: an exported ONNX file computes the centre view; use single "
                                 "or flip (multiview needs the run folder)")
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.input_shape:
            raise LocalconvError(f"{self.path} takes uint8 images [N, {', '.join(map(str, self.input_shape))}], "
                                 f"got {images.dtype} {list(images.shape)}")
        probs = self._probabilities(images)
        if views == "flip":
            probs = (probs + self._probabilities(np.ascontiguousarray(images[..., ::-1]))) / 2
        return probs

    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        try:
            (probs,) = self.session.run(["probabilities"], {INPUT_NAME: images})
        except Exception as exc:  # onnxruntime's own types: a graph that does not take what its side-car says
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise LocalconvError(f"{self.path}: onnxruntime could not run it ({first})") from None
        if probs.shape != (len(images), len(self.classes)):
            raise LocalconvError(f"{self.path}: gives {list(probs.shape)} probabilities for {len(images)} image(s) "
                                 f"and {len(self.classes)} classes")
        return probs.astype(np.float64)
