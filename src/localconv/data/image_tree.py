"""Image-folder trees (``train/<class>/<image>``, ``test/<class>/<image>``) on disk or in tarballs."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .archive import iter_archive
from .cifar_data import IMAGE_SIDE, CifarData
from .images import decode_dataset_image

SPLITS = ("train", "test")


@dataclass
class ImageTree:
    """Collects decoded images per split and class, then builds a :class:`CifarData`."""

    where: str
    images: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = field(
        default_factory=lambda: {split: {} for split in SPLITS})

    def add_class(self, split: str, name: str) -> None:
        self.images[split].setdefault(name, [])

    def add_image(self, split: str, class_name: str, file_name: str, data: bytes, shown_name: str) -> None:
        self.add_class(split, class_name)
        self.images[split][class_name].append((file_name, decode_dataset_image(data, shown_name, IMAGE_SIDE)))

    def build(self, description: str) -> CifarData:
        for split in SPLITS:
            if not self.images[split]:
                raise DataError(f"{self.where}: no class folders under {split}/ (expected {split}/<class>/<image>)")
            for class_name, items in self.images[split].items():
                if not items:
                    raise DataError(f"{self.where}: class folder {split}/{class_name}/ holds no images")
        train_classes, test_classes = set(self.images["train"]), set(self.images["test"])
        if train_classes != test_classes:
            only_train = ", ".join(sorted(train_classes - test_classes)) or "-"
            only_test = ", ".join(sorted(test_classes - train_classes)) or "-"
            raise DataError(f"{self.where}: train/ and test/ have different class folders "
                            f"(only in train: {only_train}; only in test: {only_test})")
        classes = sorted(train_classes)
        arrays = {}
        for split in SPLITS:
            images, labels = [], []
            for index, class_name in enumerate(classes):
                for _, image in sorted(self.images[split][class_name], key=lambda item: item[0]):
                    images.append(image)
                    labels.append(index)
            arrays[split] = (np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)),
                             np.array(labels, dtype=np.int64))
        return CifarData(arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
                         classes, description)


def _is_hidden(name: str) -> bool:
    # .DS_Store, macOS ._resource forks, editor backups: never part of a dataset.
    return name.startswith(".")


def list_tree_files(root: Path) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> image files of an image-folder tree on disk (sorted; hidden entries skipped)."""
    tree: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            other = "test" if split == "train" else "train"
            raise DataError(f"{root}: has {other}/ but no {split}/ folder (an image-folder tree needs both)")
        tree[split] = {}
        for entry in _sorted_entries(split_dir):
            if _is_hidden(entry.name):
                continue
            if not entry.is_dir():
                raise DataError(f"{entry.path}: unexpected file, {split}/ must hold only class folders")
            files = []
            for item in _sorted_entries(Path(entry.path)):
                if _is_hidden(item.name):
                    continue
                if item.is_dir():
                    raise DataError(f"{item.path}: unexpected folder, expected image files in {split}/{entry.name}/")
                files.append(Path(item.path))
            tree[split][entry.name] = files
    return tree


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def add_archive_split(tree: ImageTree, archive: Path, split: str, progress: bool) -> None:
    """Decode the ``split/<class>/<image>`` members of one tarball into ``tree``; other members are skipped."""
    for member in iter_archive(archive, progress, desc=f"decoding {archive.name}"):
        parts = member.parts
        if parts[0] != split or any(_is_hidden(part) for part in parts):
            continue
        if member.info.isdir():
            if len(parts) == 2:
                tree.add_class(split, parts[1])
            continue
        shown = f"{archive}:{member.name}"
        if len(parts) != 3:
            raise DataError(f"{shown}: unexpected member, expected {split}/<class>/<image>")
        if not member.info.isfile():
            raise DataError(f"{shown}: not a regular file (links are not followed inside archives)")
        tree.add_image(split, parts[1], parts[2], member.read(), shown)
