"""Run folders and atomic checkpoints.

A run folder holds::

    run.json                   metadata: model spec, args, progress, file names + sha256 (the commit point)
    model-<step>.safetensors   raw weights and buffers
    ema-<step>.safetensors     averaged weights (what eval/predict use)
    optim-<step>.pt            optimizer state (torch.save; loaded with weights_only=True)
    metrics.jsonl              one JSON object per logged event

Every file is written to a temporary name, fsynced and renamed; ``run.json`` is
replaced last and names the files of its checkpoint, so a crash or ``kill -9`` at any
moment leaves ``run.json`` pointing at a complete, checksummed checkpoint. Files of
older checkpoints are deleted only after the new ``run.json`` is in place.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..errors import CheckpointError, LocalconvError
from ..models.base import Classifier, ModelValueError
from ..models.registry import build_model_from_spec
from .run_schema import validate_run_meta

RUN_FORMAT = "localconv-run/1"
RUN_FILE = "run.json"
CHECKPOINT_FILE = re.compile(r"(model|ema)-\d{9}\.safetensors|optim-\d{9}\.pt")  # names save_checkpoint uses
# atomic_write's temp files of the files above, run.json and metrics.jsonl: ".NAME." + mkstemp's 8 characters
# + ".tmp". Only these are ever removed: a user's ".draft.tmp" or ".tmpABC123" next to them is left alone.
TEMP_FILE = re.compile(r"\.((model|ema)-\d{9}\.safetensors|optim-\d{9}\.pt|run\.json|metrics\.jsonl)"
                       r"\.[a-z0-9_]{8}\.tmp")
_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode an ordinary new file gets under the process umask (0o666 & ~umask)."""
    with _UMASK_LOCK:  # the umask can only be read by setting it
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``; no partial file survives a failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600: run files follow the umask like any other file
    finally:
        os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_file(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Like ``safetensors.torch.save_file``, but serialized in memory and written with a plain write: newer
    safetensors write through a Rust temp file (".tmpXXXXXX") of their own that a kill would leave behind,
    and that no cleanup could tell from a user's file."""
    Path(path).write_bytes(safetensors_bytes(tensors))


def _torch_save(obj: Any, path: str) -> None:
    # Serialized in memory first: torch's zip writer turns a full disk into an obscure RuntimeError,
    # a plain write raises OSError(ENOSPC).
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    Path(path).write_bytes(buffer.getvalue())


def save_checkpoint(run_dir: Path, meta: dict[str, Any], model_state: dict[str, torch.Tensor],
                    ema_state: dict[str, torch.Tensor] | None, optim_state: dict[str, Any]) -> None:
    """Write one complete checkpoint and commit it by replacing run.json (see module doc)."""
    run_dir = Path(run_dir)
    step = int(meta["step"])
    files = {"model": f"model-{step:09d}.safetensors", "optimizer": f"optim-{step:09d}.pt"}
    if ema_state is not None:
        files["ema"] = f"ema-{step:09d}.safetensors"
    new_files = [run_dir / name for name in files.values() if not (run_dir / name).exists()]
    try:
        atomic_write(run_dir / files["model"], lambda t: save_file(_contiguous(model_state), t))
        if ema_state is not None:
            atomic_write(run_dir / files["ema"], lambda t: save_file(_contiguous(ema_state), t))
        atomic_write(run_dir / files["optimizer"], lambda t: _torch_save(optim_state, t))
        meta = dict(meta, format=RUN_FORMAT, files=files,
                    sha256={k: sha256_file(run_dir / v) for k, v in files.items()})
        atomic_write_text(run_dir / RUN_FILE, json.dumps(meta, indent=1, sort_keys=True))
    except (OSError, SafetensorError) as exc:  # safetensors reports a failed write as SafetensorError
        for path in new_files:  # this checkpoint's files that were complete before the failure: uncommitted
            try:
                path.unlink()
            except OSError:
                pass
        kept = "the previous checkpoint is intact" if (run_dir / RUN_FILE).exists() else "no checkpoint was written"
        raise CheckpointError(f"cannot write checkpoint in {run_dir}: {getattr(exc, 'strerror', None) or exc}; "
                              f"{kept}") from None
    keep = set(files.values())
    # Older checkpoints, also those whose deletion a kill interrupted, and temp files of interrupted writes.
    for p in run_dir.iterdir():
        if p.name not in keep and (CHECKPOINT_FILE.fullmatch(p.name) or TEMP_FILE.fullmatch(p.name)):
            try:
                p.unlink()
            except OSError:
                pass


def read_meta(run_dir: Path, missing_ok: bool = False) -> dict[str, Any] | None:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        if missing_ok:
            return None
        what = "does not exist" if not Path(run_dir).exists() else f"has no {RUN_FILE} (not a localconv run?)"
        raise CheckpointError(f"{run_dir}: run folder {what}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable run metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path}: not a {RUN_FORMAT} file")
    validate_run_meta(meta, str(path))
    return meta


def trim_log(path: Path, step: int) -> None:
    """Drop the records of ``path`` (metrics.jsonl) logged after ``step``, and any torn last line.

    A run killed after logging an epoch but before its checkpoint would otherwise log that epoch
    twice once resumed; the log of a resumed run must read like that of an uninterrupted one.
    """
    try:
        lines = Path(path).read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable metrics log ({exc})") from None
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        logged_at = record.get("step", 0) if isinstance(record, dict) else None
        if line.endswith("\n") and isinstance(logged_at, (int, float)) and logged_at <= step:
            kept.append(line)
    if len(kept) != len(lines):
        try:
            atomic_write_text(Path(path), "".join(kept))
        except OSError as exc:
            raise CheckpointError(f"cannot rewrite {path}: {exc.strerror or exc}") from None


def _checked(run_dir: Path, meta: dict[str, Any], key: str) -> Path:
    name = meta.get("files", {}).get(key)
    if not name:
        raise CheckpointError(f"{Path(run_dir) / RUN_FILE}: no {key!r} file recorded")
    path = Path(run_dir) / name
    if Path(name).name != name or not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file missing")
    if sha256_file(path) != meta.get("sha256", {}).get(key):
        raise CheckpointError(f"{path}: checksum mismatch (file corrupt or modified)")
    return path


def load_state(run_dir: Path, meta: dict[str, Any], key: str) -> dict[str, torch.Tensor]:
    path = _checked(run_dir, meta, key)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None


def load_optimizer_state(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    path = _checked(run_dir, meta, "optimizer")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt pickles
        raise CheckpointError(f"{path}: unreadable optimizer state ({type(exc).__name__})") from None


def load_weights_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error naming the first mismatching tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        detail = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}" if unexpected
                  else f"{bad_shape[0]!r} has shape {tuple(state[bad_shape[0]].shape)}, model wants "
                       f"{tuple(own[bad_shape[0]].shape)}")
        raise CheckpointError(f"{source}: weights do not fit this model ({detail}); "
                              "checkpoint from another model?")
    model.load_state_dict(state)


def load_run(path: str | os.PathLike, which: str = "ema", device: str = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a run's model with its ``ema`` (default) or ``raw`` weights; returns (model, metadata)."""
    if which not in ("ema", "raw"):
        raise ModelValueError(f"which must be 'ema' (averaged weights) or 'raw', got {which!r}")
    run_dir = Path(path)
    meta = read_meta(run_dir)
    key = "ema" if which == "ema" and "ema" in meta.get("files", {}) else "model"
    try:
        model = build_model_from_spec(meta["model"])
    except KeyError:
        raise CheckpointError(f"{run_dir / RUN_FILE}: no model spec") from None
    except LocalconvError as exc:
        raise CheckpointError(f"{run_dir / RUN_FILE}: cannot rebuild model: {exc}") from None
    state = load_state(run_dir, meta, key)
    bad = next((name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:  # NaN weights give constant predictions: an accuracy that means nothing
        raise CheckpointError(f"{run_dir / meta['files'][key]}: tensor {bad!r} holds NaN or Inf values; these "
                              "weights cannot be evaluated (did training diverge?)")
    load_weights_into(model, state, str(run_dir / meta["files"][key]))
    model.classes = list(meta["classes"])
    if "temperature" in meta:  # fitted by `localconv eval --calibrate`
        t = meta["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise CheckpointError(f"{run_dir / RUN_FILE}: field 'temperature' must be a number > 0, got {t!r}")
        model.temperature.fill_(float(t))
    return model.to(device).eval(), meta


def update_meta(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Set ``fields`` in a run's run.json (atomically; the checkpoint files are untouched)."""
    meta = read_meta(Path(run_dir))
    meta.update(fields)
    try:
        atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(meta, indent=1, sort_keys=True))
    except OSError as exc:
        raise CheckpointError(f"cannot update {Path(run_dir) / RUN_FILE}: {exc.strerror or exc}") from None
    return meta
