"""``val/`` beside ``train/`` (and ``test/``) in an image-folder tree: the validation split people keep.

An image-folder tree ``train/ + val/ + test/`` has its validation images in ``val/``: training evaluates on them
(the run's ``val`` split, as ``--val-split`` would give) and ``eval --split val`` reads them again; ``test/`` stays
the test split. A tree ``train/ + val/`` without ``test/`` has no test split: ``val/`` is read as the data's
evaluation images (formats.py) and is the run's ``val`` split; ``eval`` then evaluates ``--split val``.

``val/`` must hold the training classes, each with at least one image (``val/<class>/<image>``); it is decoded as
the other splits are (images.prepare_image, the run's ``--resize``) and cached as they are (data/cache.py).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cache import check_entry_key, decoded_cache_path, default_cache_dir, fingerprint, read_npz, write_npz
from .class_folders import list_class_files
from .image_tree import FileIdentities, _is_hidden
from .files import MAX_IMAGE_BYTES, read_regular_file
from .images import DEFAULT_RESIZE, decode_dataset_image

VAL = "val"


def tree_val_folder(data: str | os.PathLike | None) -> Path | None:
    """``DATA/val`` when ``DATA`` is an image-folder tree (a ``train/`` folder) with a ``val/`` folder, else None."""
    if data is None:
        return None
    root = Path(data).expanduser()
    if (root / "train").is_dir() and (root / VAL).is_dir():
        return root / VAL
    return None


def has_test_folder(data: str | os.PathLike | None) -> bool:
    return data is not None and (Path(data).expanduser() / "test").is_dir()


def _split_identities(root: Path) -> tuple[dict[tuple[int, int], str], FileIdentities]:
    """(device, inode) -> path of the class folders of ``root/train`` and ``root/test``, and -> split and path of
    their image files (stat only, one call per file, their contents unread)."""
    seen: dict[tuple[int, int], str] = {}
    files: FileIdentities = {}
    for split in ("train", "test"):
        try:
            entries = list(os.scandir(root / split))
        except OSError:  # no test/ (or an unreadable split, which its own reader reports)
            continue
        for entry in entries:
            try:
                info = entry.stat()
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                seen[(info.st_dev, info.st_ino)] = entry.path
                _note_files(Path(entry.path), f"{split}/", files)
    return seen, files


def _note_files(folder: Path, split: str, files: FileIdentities) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:  # unreadable: the split's own reader reports it
        return
    for entry in entries:
        try:
            info = entry.stat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_ino and not _is_hidden(entry.name):  # hidden: not read
            files.setdefault((info.st_dev, info.st_ino), (split, entry.path))


def read_val_folder(folder: Path, classes: list[str], resize: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``val/<class>/<image>`` as uint8 [N, 3, 32, 32] and their labels (indices into ``classes``,
    the training classes), ordered by class, then file name; decoded once, then read from the decoded cache
    (``cache_dir``, default $LOCALCONV_CACHE), keyed as an image tree's files are (data/cache.py)."""
    # a val/ class folder or image file that is a link to a train/ or test/ one would evaluate on those images
    seen_folders, seen_files = _split_identities(folder.parent)
    files = list_class_files(folder, min_per_class=1, seen_folders=seen_folders, seen_files=seen_files)
    if not files:
        raise DataError(f"{folder}: val/ holds no class folders (expected val/<class>/<image>, the classes of train/)")
    if set(files) != set(classes):
        only_val = ", ".join(sorted(set(files) - set(classes))) or "-"
        missing = ", ".join(sorted(set(classes) - set(files))) or "-"
        raise DataError(f"{folder}: val/ and train/ have different class folders (only in val: {only_val}; "
                        f"missing in val: {missing})")
    resize = resize or DEFAULT_RESIZE
    # the labels are positions in ``classes``: their order is part of the key, as the read option is
    key = fingerprint(VAL, folder, [file for name in classes for file in files[name]],
                      [f"resize={resize}", *(f"class={name}" for name in classes)])
    cache_file = decoded_cache_path(Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), VAL, key)

    def build(arrays) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        check_entry_key(arrays, key, cache_file)
        images, labels = arrays["images"], arrays["labels"]
        if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32) or labels.shape != images.shape[:1]:
            raise DataError(f"{cache_file}: unexpected arrays {images.dtype} {list(images.shape)}")
        return images, labels.astype(np.int64)

    cached = read_npz(cache_file, build, "val/")
    if cached is not None:
        return cached
    images, labels = [], []
    for index, name in enumerate(classes):
        for file in files[name]:
            data = read_regular_file(file, MAX_IMAGE_BYTES)
            images.append(decode_dataset_image(data, str(file), 32, resize))
            labels.append(index)
    result = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)), np.array(labels, dtype=np.int64)
    write_npz(cache_file, "val/", images=result[0], labels=result[1], cache_key=np.array(key))
    return result


def attach_val_folder(splits, data: str | os.PathLike | None, classes: list[str], resize: str | None,  # noqa: ANN001
                      val_split: int, in_chans: int = 3, limit_test: int | None = None,
                      cache_dir: str | os.PathLike | None = None) -> str | None:
    """Give ``splits`` (loader.Splits) the validation images of ``DATA/val`` when the tree has one: the folder's
    images with ``test/`` beside it, else the data's evaluation images (which are val/'s). Returns a line saying
    which split is which (None: no val/ folder); ``--val-split`` beside a ``val/`` folder is refused (two
    validation splits), and so is ``--limit-test`` without ``test/`` (it would trim the validation split, which
    ``eval --split val`` then reads whole)."""
    folder = tree_val_folder(data)
    if folder is None:
        return None
    if val_split:
        raise DataError(f"--val-split {val_split}: {data} has its own val/ folder, the validation split; omit "
                        "--val-split")
    if limit_test is not None and not has_test_folder(data):
        raise DataError(f"--limit-test {limit_test}: {data} has no test/ folder to limit (its val/ folder is the "
                        "validation split, used whole); omit --limit-test")
    import torch

    from .channels import to_channels

    if has_test_folder(data):
        images, labels = read_val_folder(folder, classes, resize, cache_dir)
        splits.val_images = torch.from_numpy(to_channels(images, in_chans, str(folder)))
        splits.val_labels = torch.from_numpy(labels)
        rest = "test/ is the test split (localconv eval)"
    else:  # train/ + val/ only: val/ was read as the evaluation images (formats.py)
        splits.val_images, splits.val_labels = splits.test_images, splits.test_labels
        rest = "there is no test/ split (localconv eval --split val)"
    return (f"data: {folder} is the validation split ({splits.val_labels.numel()} images, evaluated during "
            f"training); {rest}")


def val_folder_images(data_path: str | os.PathLike | None, data, resize: str | None,  # noqa: ANN001
                      in_chans: int = 3, cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The validation images of a run trained on a tree with ``val/`` (``eval --split val``): ``val/``'s images,
    which are ``data``'s evaluation images when the tree has no ``test/``."""
    folder = tree_val_folder(data_path)
    if folder is None:
        raise DataError(f"{data_path}: has no train/ and val/ folders; the run's validation split was its val/ "
                        "folder: give the data the run was made with")
    if not has_test_folder(data_path):
        return data.test_images, data.test_labels
    images, labels = read_val_folder(folder, list(data.classes), resize, cache_dir)
    from .channels import to_channels

    return to_channels(images, in_chans, str(folder)), labels
