"""What identifies the images a run was made with, and the check that later uses see the same ones.

``train --val-split N`` holds out a seeded permutation of the *current* training images, so images added
or removed after training move the validation split onto images the model trained on, and ``--resume
--data OTHER`` would continue on other data. ``train`` therefore records (run.json ``data.identity``) the
size and per-class counts of the source's training split, and for the training and validation images it
selected (a tree's own ``val/`` folder: all of its images) and the whole test split: how many, a digest of
their positions and a SHA-256 of their decoded pixels and labels. Pixels, not paths or modification times: a
moved or copied dataset, or one re-packed without changing a pixel, has the same identity; an added, removed, swapped or re-encoded image changes it. Hashing the 50,000 CIFAR-10
training images costs 0.15-0.25 s (benchmarks/data_cache_time.py; SHA-256 with the CPU's SHA instructions).

``eval --split val``, ``eval --calibrate`` and ``train --resume`` recompute it and refuse with one line that
says what changed (:func:`check_identity`); so does ``eval`` of the test split drawn from the run's own folder
of class folders (data/class_folders.py: added images would move it onto training images).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import DataError
from .cifar_data import CifarData
from .loader import split_indices

IDENTITY_VERSION = 1
PARTS = ("train", "val", "test")
_CHUNK = 4096  # images hashed per copy: bounded memory whatever the selection


def selection_digest(images: np.ndarray, labels: np.ndarray, positions: np.ndarray) -> dict[str, Any]:
    """How many images ``positions`` select, a digest of the positions, and the SHA-256 of their labels and
    pixels in position order."""
    positions = np.sort(np.asarray(positions, dtype=np.int64))
    content = hashlib.sha256(np.asarray(labels[positions], dtype="<i8").tobytes())
    for start in range(0, positions.size, _CHUNK):
        content.update(np.ascontiguousarray(images[positions[start:start + _CHUNK]]).data)
    return {"images": int(positions.size),
            "positions_sha256": hashlib.sha256(positions.astype("<i8").tobytes()).hexdigest(),
            "sha256": content.hexdigest()}


def identity_record(data: CifarData, val_split: int = 0, limit_train: int | None = None,
                    parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """run.json's ``data.identity`` of a run on ``data`` with ``--val-split`` / ``--limit-train`` (the
    selection of :func:`localconv.data.loader.select_splits`); only the ``parts`` named are hashed."""
    n = len(data.train_labels)
    train_idx, val_idx = split_indices(n, val_split or 0, limit_train)
    record: dict[str, Any] = {
        "version": IDENTITY_VERSION, "source_train_images": n,
        "source_per_class": np.bincount(data.train_labels, minlength=data.num_classes).tolist()}
    for part, positions in (("train", train_idx), ("val", val_idx)):
        if part in parts:
            record[part] = selection_digest(data.train_images, data.train_labels, positions) if positions.size \
                else None
    if "test" in parts:  # the whole test split (eval's own --limit-test draws from it)
        record["test"] = selection_digest(data.test_images, data.test_labels, np.arange(len(data.test_labels)))
    return record


def with_val_folder(record: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """``record`` whose ``val`` is the digest of a tree's own ``val/`` images (data/val_folder.py), the run's
    validation split: images copied into ``val/`` after training (training images among them) must not pass."""
    images, labels = np.asarray(images), np.asarray(labels)
    return {**record, "val": selection_digest(images, labels, np.arange(len(labels))) if len(labels) else None}


def _count_changes(recorded: list[int], now: list[int], classes: list[str]) -> str:
    changed = [f"{name} {then:,} -> {count:,}" for name, then, count in zip(classes, recorded, now) if then != count]
    return ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")


def identity_difference(recorded: dict[str, Any], current: dict[str, Any], parts: tuple[str, ...],
                        classes: list[str]) -> str | None:
    """What differs between the run's ``recorded`` identity and ``current`` for the ``parts`` a use needs, in
    words; None when they match."""
    n_then, n_now = recorded.get("source_train_images"), current["source_train_images"]
    per_class_then = recorded.get("source_per_class")
    if n_then != n_now or (isinstance(per_class_then, list) and per_class_then != current["source_per_class"]):
        verb = "added" if isinstance(n_then, int) and n_now > n_then else \
            "removed" if isinstance(n_then, int) and n_now < n_then else "moved between classes"
        detail = _count_changes(per_class_then, current["source_per_class"], classes) \
            if isinstance(per_class_then, list) and len(per_class_then) == len(classes) else ""
        return (f"its training split holds {n_now:,} images, {n_then:,} when the run was made (images {verb} since"
                + (f": {detail})" if detail else ")"))
    for part in parts:
        if part not in recorded:  # recorded before this part was: it cannot be checked
            continue
        then, now = recorded.get(part), current.get(part)
        if (then is None) != (now is None):
            return f"the run's {part} selection is {'empty' if then is None else 'not empty'} but not now"
        if then is None:
            continue
        what = {"train": "training", "val": "validation"}.get(part, part)
        if then.get("images") != now["images"]:  # e.g. images copied into a tree's own val/ folder
            return f"the run's {what} images were {then.get('images'):,}, now {now['images']:,}"
        if then.get("positions_sha256") != now["positions_sha256"]:
            return f"the {what} images are drawn from other positions than the run's"
        if then.get("sha256") != now["sha256"]:
            return (f"the {now['images']:,} {what} images differ in content from the run's (images changed, "
                    "swapped, renamed or re-encoded since the run was made)")
    return None


def check_identity(recorded: Any, data: CifarData, parts: tuple[str, ...], val_split: int = 0,
                   limit_train: int | None = None, *, shown: str, consequence: str,
                   current: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Refuse with one :class:`DataError` line (``SHOWN: what changed; CONSEQUENCE``) when ``data`` is not what
    the run recorded for ``parts``. ``current``: ``data``'s identity if already computed (else only ``parts``
    are hashed). Returns the current identity, or None when the run records none (a run written before
    localconv recorded it: nothing can be checked)."""
    if not isinstance(recorded, dict):
        return None
    current = current or identity_record(data, val_split, limit_train, parts)
    difference = identity_difference(recorded, current, parts, list(data.classes))
    if difference is not None:
        raise DataError(f"{shown}: {difference}; {consequence}")
    return current
