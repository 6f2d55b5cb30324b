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
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from ..errors import CheckpointError, LocalconvError
from ..models.base import Classifier, ModelValueError
from ..models.registry import build_model_from_spec
from .run_schema import validate_run_meta

RUN_FORMAT = "localconv-run/1"
RUN_FILE = "run.json"
CHECKPOINT_FILE = re.compile(r"(model|ema|best)-\d{9}\.safetensors|optim-\d{9}\.pt")  # names save_checkpoint uses
# atomic_write's temp files of the files above, run.json and metrics.jsonl: ".NAME." + mkstemp's 8 characters
# + ".tmp". Only these are ever removed: a user's ".draft.tmp" or ".tmpABC123" next to them is left alone.
TEMP_FILE = re.compile(r"\.((model|ema|best)-\d{9}\.safetensors|optim-\d{9}\.pt|run\.json|metrics\.jsonl)"
                       r"\.[a-z0-9_]{8}\.tmp")
_UMASK_LOCK = threading.Lock()
# run.json fields that --resume continues from (not stop_reason nor temperature: changed after the checkpoint)
RUN_COUNTERS = ("step", "ema_updates", "images_seen", "skipped_steps", "best_step", "best_accuracy",
                "evals_since_best", "last_accuracy", "partial_epoch")


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
                    ema_state: dict[str, torch.Tensor] | None, optim_state: dict[str, Any],
                    best: tuple[int, dict[str, torch.Tensor] | None] | None = None) -> None:
    """Write one complete checkpoint and commit it by replacing run.json (see module doc).

    ``best``: (step, evaluated weights) of the best evaluation so far, kept as ``best-<step>.safetensors``
    beside the last checkpoint; weights None: that file was written by an earlier checkpoint and is kept."""
    run_dir = Path(run_dir)
    step = int(meta["step"])
    files = {"model": f"model-{step:09d}.safetensors", "optimizer": f"optim-{step:09d}.pt"}
    if ema_state is not None:
        files["ema"] = f"ema-{step:09d}.safetensors"
    best_state, carried = (best[1] if best is not None else None), {}
    if best is not None:
        name = f"best-{best[0]:09d}.safetensors"
        if best_state is None:  # kept from the committed checkpoint, with the checksum it was written with
            previous = read_meta(run_dir, missing_ok=True) or {}
            if previous.get("files", {}).get("best") == name and (run_dir / name).is_file():
                carried = {"best": previous["sha256"]["best"]}
        if best_state is not None or carried:
            files["best"] = name
    new_files = [run_dir / name for name in files.values() if not (run_dir / name).exists()]
    # run.json has no checksum: the counters --resume continues from travel in the checksummed optimizer file too
    optim_state = {**optim_state, "run_counters": json.dumps({k: meta.get(k) for k in RUN_COUNTERS})}
    try:
        atomic_write(run_dir / files["model"], lambda t: save_file(_contiguous(model_state), t))
        if ema_state is not None:
            atomic_write(run_dir / files["ema"], lambda t: save_file(_contiguous(ema_state), t))
        atomic_write(run_dir / files["optimizer"], lambda t: _torch_save(optim_state, t))
        if best_state is not None:
            atomic_write(run_dir / files["best"], lambda t: save_file(_contiguous(best_state), t))
        meta = dict(meta, format=RUN_FORMAT, files=files,
                    sha256={k: carried.get(k) or sha256_file(run_dir / v) for k, v in files.items()})
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
    except RecursionError:  # json's decoder recurses once per nested level
        raise CheckpointError(f"{path}: unreadable run metadata (nested too deeply); was the file edited?") from None
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
        except (json.JSONDecodeError, RecursionError):  # a torn or damaged line: dropped
            continue
        logged_at = record.get("step", 0) if isinstance(record, dict) else None
        if line.endswith("\n") and isinstance(logged_at, (int, float)) and logged_at <= step:
            kept.append(line)
    if len(kept) != len(lines):
        try:
            atomic_write_text(Path(path), "".join(kept))
        except OSError as exc:
            raise CheckpointError(f"cannot rewrite {path}: {exc.strerror or exc}") from None


def log_size(path: Path) -> int:
    """The size of a metrics log now (0 if absent): where :func:`rewind_log` can take it back to."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def rewind_log(path: Path, size: int) -> None:
    """Drop what was appended to ``path`` after it had ``size`` bytes: the records of epochs whose checkpoint
    failed, so that the log never reports more than the last checkpoint holds. Shrinking needs no free space."""
    try:
        if os.path.getsize(path) > size:
            os.truncate(path, size)
    except OSError:
        pass  # resume trims by step anyway (trim_log)


def _checked(run_dir: Path, meta: dict[str, Any], key: str) -> tuple[Path, bytes]:
    """The checkpoint file ``files[key]`` and its bytes, read once and checked against ``sha256[key]`` (one read:
    what was checked is what is loaded, even if a training replaces the file meanwhile)."""
    name = meta.get("files", {}).get(key)
    if not name:
        raise CheckpointError(f"{Path(run_dir) / RUN_FILE}: no {key!r} file recorded")
    if Path(name).name != name or name in (".", ".."):  # "/etc/passwd", "../other-run/model.safetensors"
        raise CheckpointError(f"{Path(run_dir) / RUN_FILE}: files.{key} = {name!r} is not a file of the run folder "
                              "(a plain file name); was the file edited?")
    path = Path(run_dir) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file missing")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256", {}).get(key):
        raise CheckpointError(f"{path}: checksum mismatch (file corrupt or modified)")
    return path, data


def load_state(run_dir: Path, meta: dict[str, Any], key: str) -> dict[str, torch.Tensor]:
    path, data = _checked(run_dir, meta, key)
    try:
        return safetensors_load(data)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None


def load_optimizer_state(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    path, data = _checked(run_dir, meta, "optimizer")
    try:
        ostate = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt pickles
        raise CheckpointError(f"{path}: unreadable optimizer state ({type(exc).__name__})") from None
    try:  # as run.json holds them: JSON both (absent: written by an older localconv)
        counters = json.loads(ostate["run_counters"])
    except Exception:  # noqa: BLE001 - absent or damaged: check_optimizer_state judges the rest
        counters = None
    if isinstance(counters, dict):
        for key in RUN_COUNTERS:
            if key in counters and meta.get(key) != counters[key]:
                raise CheckpointError(f"{Path(run_dir) / RUN_FILE}: {key} is {_shown(meta.get(key))}, its checkpoint "
                                      f"was written with {_shown(counters[key])}; was the file edited?")
    return ostate


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def check_optimizer_state(ostate: Any, optimizer: torch.optim.Optimizer, source: str) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``ostate`` (an optim-*.pt as :meth:`Trainer.save` writes
    it) fits ``optimizer`` exactly: a file that unpickles safely can still hold wrong types, a wrong-size RNG
    state or momentum of the wrong shape, which torch would report only inside ``optimizer.step()``."""
    def refuse(detail: str) -> CheckpointError:
        return CheckpointError(f"{source}: optimizer state does not fit this run ({detail}); was the file modified?")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(ostate, dict) or not isinstance(ostate.get("optimizer"), dict):
        raise refuse("no 'optimizer' record")
    rng, own_rng = ostate.get("torch_rng"), torch.get_rng_state()
    if not isinstance(rng, torch.Tensor) or rng.dtype != own_rng.dtype or rng.shape != own_rng.shape:
        raise refuse(f"'torch_rng' must be a {str(own_rng.dtype).replace('torch.', '')} tensor of shape "
                     f"{tuple(own_rng.shape)}")
    saved, groups = ostate["optimizer"].get("param_groups"), optimizer.param_groups
    if not isinstance(saved, list) or len(saved) != len(groups):
        raise refuse(f"'param_groups' must be a list of {len(groups)} groups")
    shapes: dict[int, torch.Tensor] = {}
    for i, (group, own) in enumerate(zip(saved, groups)):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list) \
                or len(group["params"]) != len(own["params"]):
            raise refuse(f"param group {i} must list {len(own['params'])} parameters")
        bad = next((k for k in ("lr", "momentum", "wc") if k in own and not number(group.get(k))), None)
        if bad is not None:
            raise refuse(f"param group {i}: {bad!r} must be a finite number, got {group.get(bad)!r:.40}")
        for index, param in zip(group["params"], own["params"]):
            if isinstance(index, bool) or not isinstance(index, int) or index in shapes:
                raise refuse(f"param group {i}: parameter ids must be distinct integers, got {index!r:.40}")
            shapes[index] = param
    state = ostate["optimizer"].get("state")
    if not isinstance(state, dict):
        raise refuse("'state' must be a dict")
    for index, entry in state.items():
        if index not in shapes or not isinstance(entry, dict) or set(entry) - {"momentum_buffer"}:
            raise refuse(f"state of parameter {index!r:.40} is not a momentum buffer of a known parameter")
        buffer, param = entry.get("momentum_buffer"), shapes[index]
        if buffer is not None and (not isinstance(buffer, torch.Tensor) or buffer.shape != param.shape
                                   or buffer.dtype != param.dtype):
            got = (f"{tuple(buffer.shape)} {str(buffer.dtype).replace('torch.', '')}"
                   if isinstance(buffer, torch.Tensor) else type(buffer).__name__)
            raise refuse(f"momentum of parameter {index} is {got}, the parameter is {tuple(param.shape)} "
                         f"{str(param.dtype).replace('torch.', '')}")


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
    # load_state_dict would cast silently (int32 or bool weights evaluated as floats): localconv writes every
    # tensor in the dtype of the model it trained
    bad_dtype = sorted(k for k in own if own[k].dtype != state[k].dtype)
    if bad_dtype:
        name = bad_dtype[0]
        raise CheckpointError(f"{source}: tensor {name!r} is {str(state[name].dtype).replace('torch.', '')}, the "
                              f"model wants {str(own[name].dtype).replace('torch.', '')}; was the file modified?")
    model.load_state_dict(state)


WEIGHT_CHOICES = ("ema", "raw", "best")  # load_run's ``which``; eval/predict/export's --weights


def weights_key(meta: dict[str, Any], which: str) -> str:
    """The key of run.json ``files`` that ``which`` (ema, raw, best) loads: ema falls back to the raw weights
    ('model') when the recipe keeps no average."""
    files = meta.get("files", {})
    return "best" if which == "best" else "ema" if which == "ema" and "ema" in files else "model"


READ_RETRIES = 20  # fresh run.json reads when a checkpoint's files vanish under a reader (a training replaced them)


def _reread_meta(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """run.json again if it now differs from ``meta`` (a newer checkpoint), else None."""
    try:
        newer = read_meta(run_dir)
    except CheckpointError:
        return None
    return newer if newer != meta else None


def read_run_weights(run_dir: str | os.PathLike, which: str = "ema"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """A run's checksummed, finite weights: (state dict, run.json, key of ``files``). ``which``: ``ema`` (the
    averaged weights, or the raw ones when the recipe keeps none), ``raw``, or ``best`` (the weights evaluated
    best on the evaluation split, kept by ``train``)."""
    if which not in WEIGHT_CHOICES:
        raise ModelValueError(f"which must be 'ema' (averaged weights), 'raw' or 'best', got {which!r}")
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    files = meta.get("files", {})
    if which == "best" and "best" not in files:
        raise CheckpointError(f"{run_dir}: the run keeps no best checkpoint (it was never evaluated, or trained "
                              "by an older localconv); use --weights ema or raw")
    key = weights_key(meta, which)
    for attempt in range(READ_RETRIES + 1):
        try:
            state = load_state(run_dir, meta, key)
            break
        except CheckpointError:
            # a training may have committed a newer checkpoint, and removed this one's files, since run.json was
            # read: read the new run.json and its files (they are complete before run.json names them)
            newer = _reread_meta(run_dir, meta)
            if newer is None or attempt == READ_RETRIES:
                raise
            meta, files = newer, newer.get("files", {})
            key = weights_key(meta, which)
    bad = next((name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:  # NaN weights give constant predictions: an accuracy that means nothing
        raise CheckpointError(f"{run_dir / files[key]}: tensor {bad!r} holds NaN or Inf values; these "
                              "weights cannot be evaluated (did training diverge?)")
    return state, meta, key


def load_run(path: str | os.PathLike, which: str = "ema", device: str = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a run's model with its ``ema`` (default), ``raw`` or ``best`` weights (see
    :func:`read_run_weights`); returns (model, metadata)."""
    run_dir = Path(path)
    state, meta, key = read_run_weights(run_dir, which)
    try:
        model = build_model_from_spec(meta["model"])
    except KeyError:
        raise CheckpointError(f"{run_dir / RUN_FILE}: no model spec") from None
    except LocalconvError as exc:
        raise CheckpointError(f"{run_dir / RUN_FILE}: cannot rebuild model: {exc}") from None
    load_weights_into(model, state, str(run_dir / meta["files"][key]))
    model.classes = list(meta["classes"])
    if "temperature" in meta:  # fitted by `localconv eval --calibrate`; its range checked by run_schema
        model.temperature.fill_(float(meta["temperature"]))
    return model.to(device).eval(), meta


def update_meta(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Set ``fields`` in a run's run.json (atomically; the checkpoint files are untouched)."""
    meta = read_meta(Path(run_dir))
    meta.update(fields)
    validate_run_meta(meta, str(Path(run_dir) / RUN_FILE))  # never write a record that readers would refuse
    try:
        atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(meta, indent=1, sort_keys=True))
    except OSError as exc:
        raise CheckpointError(f"cannot update {Path(run_dir) / RUN_FILE}: {exc.strerror or exc}") from None
    return meta
