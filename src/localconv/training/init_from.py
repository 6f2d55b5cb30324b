"""Start a model from trained weights: ``train --init-from SOURCE`` and ``localconv.create_model(name,
checkpoint_path=SOURCE)``.

A source is a run folder (its averaged weights by default, checked against run.json's sha256) or a
``.safetensors`` file of a model's ``state_dict``. Nothing is downloaded: localconv hosts no pretrained
weights. The classifier is kept only when it is the one the new model needs (same class count, and the same
class names where the source names them); otherwise it is re-made (``reset_classifier``), and every other
tensor must fit exactly.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load

from ..errors import CheckpointError, LocalconvError, ModelError
from ..models.base import Classifier, ModelValueError, check_num_classes
from ..models.registry import build_model_from_spec, canonical_name, create_model as create_architecture
from .checkpoint import RUN_FILE, load_weights_into, read_run_weights

NO_HOSTED_WEIGHTS = ("localconv hosts no pretrained weights (nothing is downloaded); give checkpoint_path= a run "
                     "folder written by `localconv train` or a .safetensors file of a model's state_dict")


def read_source(source: str | os.PathLike, which: str = "ema") -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                                                         dict[str, Any] | None]:
    """The weights of ``source`` (a run folder or a .safetensors file), what run.json records about them
    (``init_from``), and the run's metadata (None for a bare file)."""
    path = Path(source)
    if path.is_dir():
        if not (path / RUN_FILE).is_file():
            raise CheckpointError(f"{path}: not a localconv run folder (no {RUN_FILE})")
        state, meta, key = read_run_weights(path, which)
        record = {"path": str(path.resolve()), "kind": "run", "weights": key if key != "model" else "raw",
                  "file": meta["files"][key], "sha256": meta["sha256"][key], "step": meta["step"],
                  "model": meta["model"].get("name") or "cfg", "classes": list(meta["classes"])}
        return state, record, meta
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or weights file")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: give a run folder or a .safetensors file (pickled .pt/.pth files are not "
                              "loaded: they can run code; save the state_dict with safetensors.torch.save_file)")
    try:
        data = path.read_bytes()  # read once: the checksum recorded is that of the bytes loaded
        state = safetensors_load(data)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({getattr(exc, 'strerror', None) or exc})") from None
    bad = next((name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad!r} holds NaN or Inf values")
    return state, {"path": str(path.resolve()), "kind": "safetensors", "sha256": hashlib.sha256(data).hexdigest()}, None


def head_prefix(model: Classifier) -> str:
    """The state_dict prefix of the model's classifier (``softmax_linear.``)."""
    head = model.get_classifier()
    name = next(name for name, module in model.named_modules() if module is head)
    return f"{name}." if name else ""


def head_outputs(model: Classifier, state: dict[str, torch.Tensor], source: str) -> int:
    """How many classes the classifier in ``state`` has (its bias length, or its weight's first dimension)."""
    prefix = head_prefix(model)
    for key in (f"{prefix}bias", f"{prefix}weight", *sorted(k for k in state if k.startswith(prefix))):
        if key in state and state[key].dim() >= 1:
            return int(state[key].shape[0])
    raise CheckpointError(f"{source}: no classifier ({prefix.rstrip('.') or 'head'}) among the weights; "
                          "weights of another model?")


def load_into(model: Classifier, source: str | os.PathLike, which: str = "ema") -> dict[str, Any]:
    """Load the weights of ``source`` into ``model``; returns what run.json records as ``init_from``."""
    state, record, _ = read_source(source, which)
    return load_state_into(model, state, record)


def load_state_into(model: Classifier, state: dict[str, torch.Tensor], record: dict[str, Any]) -> dict[str, Any]:
    """Load ``state`` (read by :func:`read_source`, described by ``record``) into ``model``; returns ``record``.

    The source's classifier is loaded with the rest (the model's head is first re-made to its class count if
    it differs); a caller that trains on other classes then re-makes it with ``reset_classifier``. The
    temperature is left at 1: a calibration belongs to the source's run, not to a model trained further.
    """
    where = str(Path(record["path"]) / record["file"]) if "file" in record else record["path"]
    count = head_outputs(model, state, where)
    if count != model.num_classes:
        if count < 2:
            raise CheckpointError(f"{where}: its classifier has {count} output(s)")
        model.reset_classifier(count)
    if "temperature" in state:
        state = {**state, "temperature": torch.ones_like(state["temperature"])}
    load_weights_into(model, state, where)
    model.classes = record.get("classes")
    return record


MODEL_OPTIONS = ("crop", "conv1_std", "conv2_std", "softmax_output", "in_chans")  # train options that change a model


def model_from_source(source: str | os.PathLike, meta: dict[str, Any] | None, args: Any = None) -> Classifier:
    """The architecture of ``source`` from its run.json ``meta`` (``train --init-from RUN`` without
    --model/--cfg); a bare .safetensors file (``meta`` None) does not name one. A model option in ``args``
    (``--in-chans 1``) is refused: the run's own model would silently ignore it."""
    if meta is None:
        raise LocalconvError(f"--init-from {source}: a .safetensors file does not say which model it holds; give "
                             "--model or --cfg too")
    given = next((key for key in MODEL_OPTIONS if getattr(args, key, None) is not None), None)
    if given is not None:
        option = "--" + given.replace("_", "-")
        raise LocalconvError(f"{option}: --init-from {source} without --model/--cfg rebuilds the run's model as it "
                             f"was; give --model (or --cfg) with {option} to change it")
    try:
        return build_model_from_spec(meta["model"])
    except LocalconvError as exc:
        raise CheckpointError(f"{Path(source) / RUN_FILE}: cannot rebuild model: {exc}") from None


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 **kwargs: Any) -> Classifier:
    """``localconv.create_model``: a registered model (timm's signature), with trained weights from
    ``checkpoint_path`` (a run folder or a .safetensors file) when given.

    ``pretrained=True`` needs ``checkpoint_path``: localconv hosts no weights. Without ``num_classes`` the
    model takes the source's class count (and a run's class names and calibrated temperature); with another
    ``num_classes`` the classifier is re-made, freshly initialised, as timm does.
    """
    if not isinstance(pretrained, bool):
        raise ModelValueError(f"pretrained must be True or False, got {pretrained!r}")
    if checkpoint_path is None:
        if pretrained:
            raise ModelError(f"create_model({name!r}, pretrained=True): {NO_HOSTED_WEIGHTS}")
        return create_architecture(name, **kwargs)
    wanted = kwargs.pop("num_classes", None)
    if wanted is not None:
        wanted = check_num_classes(wanted)
    state, record, meta = read_source(checkpoint_path)
    if meta is not None and meta["model"].get("name") != canonical_name(str(name)):
        held = meta["model"].get("name") or "a cfg-file model"
        raise ModelError(f"checkpoint_path {checkpoint_path}: the run holds {held}, not {name!r}")
    model = create_architecture(name, **kwargs)
    load_state_into(model, state, record)
    if meta is not None and "temperature" in meta:  # the run's calibration, for its own head
        model.temperature.fill_(float(meta["temperature"]))
    if wanted is not None and wanted != model.num_classes:
        model.reset_classifier(wanted)  # a fresh head: also forgets the classes and the temperature
    return model.eval()
