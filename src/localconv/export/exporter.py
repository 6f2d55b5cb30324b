"""``localconv export``: a run's classifier as an ONNX file or a ``torch.export`` program, checked against
the eager model before it is kept.

The exported graph is the whole classifier of ``localconv eval``: raw uint8 images ``[batch, C, 32, 32]``
(NCHW) in, the model's own preprocessing (``Classifier.preprocess``: centre crop, per-image standardization
or pixel-mean subtraction), the network, then ``logits`` and ``probabilities`` (softmax at the run's
calibrated temperature) out. The batch dimension is dynamic. The file is written under a temporary name,
run on a few images at two batch sizes (onnxruntime for ONNX) and compared with the eager model; only a file
that matches is renamed into place, after its side-car JSON.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LocalconvError
from ..models.base import SOURCE_SIZE, Classifier
from ..optional_deps import require
from ..training.checkpoint import atomic_write, atomic_write_text, load_run, read_meta, sha256_file, weights_key
from .metadata import FORMATS, INPUT_NAME, OUTPUT_NAMES, describe, read_sidecar, sidecar_path, write_sidecar

CHECK_BATCHES = (2, 5)  # batch sizes the exported file is run at: two, so that a fixed batch dimension shows
CHECK_ATOL = 1e-4       # float32 graphs reorder sums: logits of these small networks agree to ~1e-6
CHECK_SEED = 24


class ExportError(LocalconvError):
    """The exported file does not reproduce the eager model (a bug, not bad input): exit 1."""

    exit_code = 1


class DeployableClassifier(nn.Module):
    """uint8 images [N, C, 32, 32] -> (logits, probabilities): the classifier as ``eval``/``predict`` run it."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.output_logits(self.model(self.model.preprocess(images)))
        return logits, torch.softmax(logits / self.model.temperature, dim=-1)


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    max_abs_diff: float  # largest difference from the eager model's logits and probabilities over the check images
    n_checked: int


def default_out(run: Path, export_format: str) -> Path:
    """``runs/tf1`` -> ``runs/tf1/model.onnx`` (or ``model.pt2``)."""
    return Path(run) / f"model{FORMATS[export_format]}"


def check_images(chans: int, n: int, seed: int = CHECK_SEED) -> torch.Tensor:
    """Seeded random uint8 images and a flat grey and a saturated one (standardization's edge cases)."""
    gen = torch.Generator().manual_seed(seed + n)
    images = torch.randint(0, 256, (n, chans, SOURCE_SIZE, SOURCE_SIZE), generator=gen, dtype=torch.uint8)
    images[0] = 128
    if n > 1:
        images[1] = 255
    return images


def export_run(run: str | os.PathLike, export_format: str = "onnx", out: str | os.PathLike | None = None,
               weights: str = "ema") -> ExportResult:
    """Export the run folder ``run`` (``weights``: ema, raw or best) to ``out`` (default: in the run folder)."""
    if export_format not in FORMATS:
        raise LocalconvError(f"--format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    if export_format == "onnx":
        for module in ("onnx", "onnxruntime", "onnxscript"):
            require(module, "--format onnx", module)
    run = Path(run)
    read_meta(run)  # a missing or damaged run is named before the output path
    path = Path(out) if out is not None else default_out(run, export_format)
    if path.suffix != FORMATS[export_format]:
        raise LocalconvError(f"--out {path}: {export_format} files are named *{FORMATS[export_format]}")
    if not path.absolute().parent.is_dir():
        raise LocalconvError(f"--out {path}: {path.parent} is not an existing folder")
    if path.is_dir():
        raise LocalconvError(f"--out {path}: is a folder")
    side = sidecar_path(path)
    if side.is_dir():
        raise LocalconvError(f"--out {path}: its side-car {side} is a folder; choose another --out")
    if path.exists() or path.is_symlink():  # only an earlier export (with its side-car JSON) is replaced
        try:
            read_sidecar(path)
        except LocalconvError:
            raise LocalconvError(f"--out {path}: the file exists and is not an export of localconv (no valid "
                                 f"{side.name}); choose another --out") from None
    elif side.exists() or side.is_symlink():  # the side-car name is taken by a file of the user's
        try:
            read_sidecar(path)
        except LocalconvError:
            raise LocalconvError(f"--out {path}: {side} exists and is not localconv export metadata; choose "
                                 "another --out") from None
    model, meta = load_run(run, which=weights)
    key = weights_key(meta, weights)  # the file used: ema falls back to raw when the recipe keeps none
    wrapper = DeployableClassifier(model).eval()
    source = {"run": str(run.resolve()), "weights": "raw" if key == "model" else key, "file": meta["files"][key],
              "sha256": meta["sha256"][key], "step": meta.get("best_step") if key == "best" else meta["step"],
              "model": meta["model"],
              "torch_version": torch.__version__}
    record = describe(model.pretrained_cfg, list(meta["classes"]), float(model.temperature), source, export_format)
    write = _write_onnx if export_format == "onnx" else _write_program
    checked: dict[str, Any] = {}

    def write_and_check(tmp: str) -> None:
        try:
            write(wrapper, tmp, dict(record))
        except OSError:  # a full disk, a removed folder: reported as such below
            raise
        except Exception as exc:  # the exporters raise many types; the model cannot be exported: not bad input
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ExportError(f"torch could not export {record['architecture']} as {export_format} "
                              f"({type(exc).__name__}: {first}); nothing written") from exc
        checked.update(_check(wrapper, tmp, export_format, model.in_chans))
        record["file_sha256"] = sha256_file(Path(tmp))  # predict refuses a file changed after export
        record["check"] = {"batch_sizes": list(CHECK_BATCHES), "max_abs_diff": checked["max_abs_diff"],
                           "tolerance": CHECK_ATOL, "against": "the eager model (torch), same weights"}
        write_sidecar(sidecar_path(path), record, atomic_write_text)

    try:
        with _folder_lock(path.absolute().parent):
            atomic_write(path, write_and_check)
    except OSError as exc:
        raise LocalconvError(f"--out {path}: cannot write ({exc.strerror or exc})") from None
    return ExportResult(path, sidecar_path(path), checked["max_abs_diff"], checked["n"])


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (flock; no lock file is left behind): two exports to one --out
    rename their side-car and file in turn, so a file never ends beside the other export's side-car."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): exports to one --out are not serialized
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """The exporters log lines that concern no localconv model (torchvision ops absent, deprecations)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _write_onnx(wrapper: DeployableClassifier, path: str, description: dict[str, Any]) -> None:
    example = check_images(wrapper.model.in_chans, CHECK_BATCHES[0])
    batch = torch.export.Dim("batch")
    with _quiet_exporters():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=list(OUTPUT_NAMES), dynamic_shapes={INPUT_NAME: {0: batch}},
                                    verbose=False)
    program.model.metadata_props["localconv"] = json.dumps(description, sort_keys=True)  # also in the file
    program.save(path)


def _write_program(wrapper: DeployableClassifier, path: str, description: dict[str, Any]) -> None:
    example = check_images(wrapper.model.in_chans, CHECK_BATCHES[0])
    with _quiet_exporters():
        program = torch.export.export(wrapper, (example,), dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}})
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name; the temporary file has another
    torch.export.save(program, buffer, extra_files={"localconv.json": json.dumps(description, sort_keys=True)})
    Path(path).write_bytes(buffer.getvalue())


def _check(wrapper: DeployableClassifier, path: str, export_format: str, chans: int) -> dict[str, Any]:
    """Run the exported file at :data:`CHECK_BATCHES` and compare with the eager model; :class:`ExportError`
    names the largest difference if they disagree."""
    if export_format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run_file(images: torch.Tensor) -> list[np.ndarray]:
            return session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
    else:
        with _quiet_exporters():
            module = torch.export.load(io.BytesIO(Path(path).read_bytes())).module()

        def run_file(images: torch.Tensor) -> list[np.ndarray]:
            with torch.no_grad():
                return [t.numpy() for t in module(images)]
    worst, n = 0.0, 0
    for size in CHECK_BATCHES:
        images = check_images(chans, size)
        with torch.no_grad():
            want = [t.numpy() for t in wrapper(images)]
        got = run_file(images)
        for name, g, w in zip(OUTPUT_NAMES, got, want):
            if g.shape != w.shape:
                raise ExportError(f"exported {name} have shape {list(g.shape)} for a batch of {size}, the eager "
                                  f"model's {list(w.shape)}")
            worst = max(worst, float(np.abs(g.astype(np.float64) - w).max()))
        n += size
    if not worst <= CHECK_ATOL:
        raise ExportError(f"the exported file differs from the eager model by up to {worst:.3g} (tolerance "
                          f"{CHECK_ATOL:g}) on {n} check images; not written")
    return {"max_abs_diff": worst, "n": n}
