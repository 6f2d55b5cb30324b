"""Image-folder trees (``train/<class>/<image>``, ``test/<class>/<image>``) on disk or in tarballs."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .archive import iter_archive
from .cifar_data import IMAGE_SIDE, CifarData
from .files import MAX_IMAGE_BYTES, is_utf8, kind_of, printable
from .images import DEFAULT_RESIZE, decode_dataset_image
from .subset import Selector, TrainingSubset, selected_positions

SPLITS = ("train", "test")


@dataclass
class ImageTree:
    """Collects decoded images per split and class, then builds a :class:`CifarData`.

    ``decode_later``: keep each image's encoded bytes; :meth:`training_subset` then decodes only the
    images it returns (the source is still read, and its archives verified, to the end first).
    """

    where: str
    resize: str = DEFAULT_RESIZE  # see images.prepare_image
    decode_later: bool = False
    # (file name, decoded image, or (bytes, shown name) with decode_later)
    images: dict[str, dict[str, list[tuple[str, Any]]]] = field(
        default_factory=lambda: {split: {} for split in SPLITS})

    def add_class(self, split: str, name: str) -> None:
        self.images[split].setdefault(name, [])

    def add_image(self, split: str, class_name: str, file_name: str, data: bytes, shown_name: str) -> None:
        self.add_class(split, class_name)
        item = (data, shown_name) if self.decode_later else self._decode(data, shown_name)
        self.images[split][class_name].append((file_name, item))

    def _decode(self, data: bytes, shown_name: str) -> np.ndarray:
        return decode_dataset_image(data, shown_name, IMAGE_SIDE, self.resize)

    def _folder(self, split: str) -> str:
        """The folder name a split was read from, for messages: a train/ + val/ tree's evaluation images are
        its val/ folder (list_tree_files)."""
        root = Path(self.where)
        if split == "test" and (root / "val").is_dir() and not (root / "test").is_dir():
            return "val"
        return split

    def _classes(self) -> list[str]:
        """The sorted class names, once every split and class folder was checked."""
        for split in SPLITS:
            folder = self._folder(split)
            if not self.images[split]:
                raise DataError(f"{self.where}: no class folders under {folder}/ (expected {folder}/<class>/<image>)")
            for class_name, items in self.images[split].items():
                if not items:
                    raise DataError(f"{os.path.join(self.where, folder, class_name)}: class folder "
                                    f"{folder}/{class_name}/ holds no images")
        train_classes, test_classes = set(self.images["train"]), set(self.images["test"])
        if train_classes != test_classes:
            only_train = ", ".join(sorted(train_classes - test_classes)) or "-"
            only_test = ", ".join(sorted(test_classes - train_classes)) or "-"
            test = self._folder("test")
            raise DataError(f"{self.where}: train/ and {test}/ have different class folders "
                            f"(only in train: {only_train}; only in {test}: {only_test})")
        return sorted(train_classes)

    def _ordered(self, split: str, classes: list[str]) -> tuple[list[Any], np.ndarray]:
        """The split's items and labels in dataset order: by class, then by file name."""
        items, labels = [], []
        for index, class_name in enumerate(classes):
            for _, item in sorted(self.images[split][class_name], key=lambda entry: entry[0]):
                items.append(item)
                labels.append(index)
        return items, np.array(labels, dtype=np.int64)

    def _stack(self, items: list[Any]) -> np.ndarray:
        images = [self._decode(*item) if self.decode_later else item for item in items]
        return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))

    def build(self, description: str) -> CifarData:
        classes = self._classes()
        arrays = {}
        for split in SPLITS:
            items, labels = self._ordered(split, classes)
            arrays[split] = (self._stack(items), labels)
        return CifarData(arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
                         classes, description)

    def training_subset(self, description: str, select: Selector) -> TrainingSubset:
        """The training images ``select(n)`` of the data :meth:`build` would give; only those are decoded."""
        classes = self._classes()
        items, labels = self._ordered("train", classes)
        positions = selected_positions(select, len(items), description)
        images = self._stack([items[i] for i in positions]) if positions.size else \
            np.zeros((0, 3, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
        return TrainingSubset(images, labels[positions], positions, len(items), classes, description)


# What Windows and macOS drop into folders they show (compared case-insensitively), skipped like hidden names.
OS_JUNK_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "__macosx"})


def _is_hidden(name: str) -> bool:
    # Hidden names (.DS_Store, macOS ._resource forks, editor backups) and OS junk: never part of a dataset.
    return name.startswith(".") or name.lower() in OS_JUNK_NAMES


def list_tree_files(root: Path) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> image files of an image-folder tree on disk (sorted; hidden entries skipped)."""
    tree: dict[str, dict[str, list[Path]]] = {}
    seen_folders: dict[tuple[int, int], str] = {}  # (device, inode) of each class folder -> its path
    seen_files: FileIdentities = {}  # and of each image file -> its split and path
    for split in SPLITS:
        split_dir = root / split
        if split == "test" and not split_dir.is_dir() and (root / "val").is_dir():
            split_dir = root / "val"  # train/ + val/ without test/: val/ holds the evaluation images (val_folder.py)
        if not split_dir.is_dir():
            other = "test" if split == "train" else "train"
            raise DataError(f"{root}: has {other}/ but no {split}/ folder (an image-folder tree needs both)")
        tree[split] = list_class_folders(split_dir, seen_folders, f"{split}/", seen_files)
    return tree


# (device, inode) of an image file -> the split folder it was met in (``train/``) and its path
FileIdentities = dict[tuple[int, int], tuple[str, str]]


def list_class_folders(folder: Path, seen_folders: dict[tuple[int, int], str], where: str,
                       seen_files: FileIdentities | None = None) -> dict[str, list[Path]]:
    """class -> image files of ``folder/<class>/<image>`` (sorted; hidden entries skipped); ``where`` names
    ``folder`` in messages (``train/``); ``seen_folders`` collects the class folders met (a link to one is refused),
    ``seen_files`` the image files (one that another split holds, through a link, is refused)."""
    classes: dict[str, list[Path]] = {}
    for entry in _sorted_entries(folder):
        if _is_hidden(entry.name):
            continue
        if not stat.S_ISDIR(_followed_stat(entry, seen_folders).st_mode):
            raise DataError(f"{entry.path}: unexpected file, {where} must hold only class folders")
        check_class_name(entry.name, entry.path)
        files = []
        for item in _sorted_entries(Path(entry.path)):
            if _is_hidden(item.name):
                continue
            info = _check_regular(item, f"{where}{entry.name}/")
            if seen_files is not None:
                check_file_in_one_split(item.path, info, where, seen_files)
            files.append(Path(item.path))
        classes[entry.name] = files
    return classes


def check_class_name(name: str, shown: str) -> None:
    """A class name is a label shown to people and stored in runs: no blank or padded names, only UTF-8."""
    if not name.strip() or name != name.strip():
        raise DataError(f"{printable(shown)}: class name {name!r} is blank or starts/ends with spaces")
    if not is_utf8(name):  # os.scandir and tarfile hand undecodable bytes over as lone surrogates
        raise DataError(f"{printable(shown)}: class folder name '{printable(name)}' is not valid UTF-8; rename it "
                        "(class names are stored in run.json and written to reports)")


def _followed_stat(entry: os.DirEntry, seen_folders: dict[tuple[int, int], str]) -> os.stat_result:
    """The stat of an entry of a split folder (links followed); a folder reached twice (``train/kitty -> cat``, or a
    train class linked to a test class) is refused: its images would get two labels, or be trained and tested on."""
    try:
        info = entry.stat()
    except OSError as exc:  # a dangling link, a link loop
        raise DataError(f"{printable(entry.path)}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        identity = (info.st_dev, info.st_ino)
        if identity in seen_folders:
            raise DataError(f"{printable(entry.path)}: is the same folder as {printable(seen_folders[identity])} "
                            "(a link); its images would be read twice, under two labels or in both splits")
        seen_folders[identity] = entry.path
    return info


def check_file_in_one_split(path: str, info: os.stat_result, split: str, seen_files: FileIdentities) -> None:
    """Refuse an image file that is also another split's (a symbolic or hard link to it): it would be trained on
    and evaluated on. Within one split a repeated file is left alone: duplicate images are the data's own."""
    if info.st_ino == 0:  # a file system without inode numbers: nothing to compare
        return
    first_split, first_path = seen_files.setdefault((info.st_dev, info.st_ino), (split, path))
    if first_split != split:
        raise DataError(f"{printable(path)}: is the same file as {printable(first_path)} (a link); an image in two "
                        "splits would be trained on and evaluated on (or evaluated twice): keep it in one split")


def _check_regular(item: os.DirEntry, folder: str) -> os.stat_result:
    # Links to image files are followed on disk (a common way to build a tree); the target must be a
    # regular file: a FIFO would block the read forever, a device would never end.
    try:
        info = item.stat()
        mode = info.st_mode
    except OSError as exc:  # a dangling link, a link loop
        raise DataError(f"{printable(item.path)}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{printable(item.path)}: unexpected folder, expected image files in {folder}")
    if not stat.S_ISREG(mode):
        raise DataError(f"{printable(item.path)}: is a {kind_of(mode)}, not a regular file (class folders hold "
                        "image files)")
    return info


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def add_archive_split(tree: ImageTree, archive: Path, split: str, progress: bool) -> None:
    """Decode the ``split/<class>/<image>`` members of one tarball into ``tree``; other members are skipped."""
    for member in iter_archive(archive, progress, desc=f"decoding {archive.name}", member_limit=MAX_IMAGE_BYTES):
        parts = member.parts
        if parts[0] != split or any(_is_hidden(part) for part in parts):
            continue
        if member.info.isdir():
            if len(parts) == 2:
                check_class_name(parts[1], f"{archive}:{member.name}")
                tree.add_class(split, parts[1])
            continue
        shown = f"{archive}:{member.name}"
        if len(parts) != 3:
            raise DataError(f"{shown}: unexpected member, expected {split}/<class>/<image>")
        check_class_name(parts[1], f"{archive}:{split}/{parts[1]}")
        tree.add_image(split, parts[1], parts[2], member.read(), shown)
