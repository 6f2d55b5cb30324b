"""Detection of the accepted dataset layouts and one reader per layout.

Accepted (see docs/data.md):

* the official python release: ``cifar-10-python.tar.gz`` or its folder ``cifar-10-batches-py/``;
* the official binary release: ``cifar-10-binary.tar.gz`` or its folder ``cifar-10-batches-bin/``;
* an image-folder tree ``train/<class>/*`` + ``test/<class>/*`` (classes = sorted folder names);
* a folder holding ``train.tar.gz`` + ``test.tar.gz`` of such trees;
* a folder that contains one of the above under its official name.

Archives are streamed with :mod:`tarfile` and their members read in memory: nothing is ever
extracted to disk, and a member with an absolute path or ``..`` makes the archive refused.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from .archive import first_member_top, iter_archive
from .cifar_data import CifarData
from .image_tree import SPLITS, ImageTree, add_archive_split, list_tree_files
from .releases import BINARY_RELEASE, BINARY_TOP, PYTHON_RELEASE, PYTHON_TOP, Release, assemble_release

SPLIT_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Official names looked for inside a folder that is none of the layouts itself.
CONTAINED_NAMES = (PYTHON_TOP, BINARY_TOP, "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz")

ACCEPTED = ("accepted: the CIFAR-10 python release (cifar-10-python.tar.gz or the folder cifar-10-batches-py/ "
            "with data_batch_1..5, test_batch, batches.meta), the binary release (cifar-10-binary.tar.gz or "
            "cifar-10-batches-bin/ with data_batch_1..5.bin, test_batch.bin, batches.meta.txt), an image-folder "
            "tree (train/<class>/*, test/<class>/*), or a folder holding train.tar.gz and test.tar.gz of such trees")


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


@dataclass
class DatasetSource:
    """A detected dataset: its kind (used in cache names), location, and how to read it."""

    kind: str
    path: Path
    description: str
    files: list[Path]  # every file the data is read from (their sizes and mtimes key the cache)
    reader: Callable[[bool], CifarData]

    def read(self, progress: bool = True) -> CifarData:
        data = self.reader(progress)
        data.validate()
        return data


def _release_folder(release: Release, kind: str, folder: Path) -> DatasetSource:
    description = f"{release.label} (folder {folder})"

    def read(progress: bool) -> CifarData:
        present = [name for name in release.all_names if (folder / name).is_file()]
        files = {name: read_file(folder / name)
                 for name in tqdm(present, desc=f"reading {folder.name}", disable=not progress)}
        return assemble_release(release, files, str(folder), f"{folder}{os.sep}", description)

    present_files = [folder / name for name in release.all_names if (folder / name).is_file()]
    return DatasetSource(kind, folder, description, present_files, read)


def _release_archive(release: Release, kind: str, archive: Path) -> DatasetSource:
    description = f"{release.label} (archive {archive})"

    def read(progress: bool) -> CifarData:
        files: dict[str, bytes] = {}
        for member in iter_archive(archive, progress, desc=f"reading {archive.name}"):
            if len(member.parts) != 2 or member.parts[0] != release.top or member.parts[1] not in release.all_names:
                continue  # readme.html and anything else
            if not member.info.isfile():
                raise DataError(f"{archive}:{member.name}: not a regular file")
            files[member.parts[1]] = member.read()
        return assemble_release(release, files, str(archive), f"{archive}:{release.top}/", description)

    return DatasetSource(kind, archive, description, [archive], read)


def python_release_archive(archive: Path) -> DatasetSource:
    """The official python-release archive at ``archive``, without sniffing it (it is md5-checked instead)."""
    return _release_archive(PYTHON_RELEASE, "python", archive.expanduser().resolve())


def _image_folder(root: Path) -> DatasetSource:
    tree_files = list_tree_files(root)
    description = f"image folders train/, test/ (folder {root})"
    all_files = [file for split in SPLITS for files in tree_files[split].values() for file in files]

    def read(progress: bool) -> CifarData:
        tree = ImageTree(str(root))
        with tqdm(total=len(all_files), unit="img", desc=f"decoding {root.name}", disable=not progress) as bar:
            for split in SPLITS:
                for class_name, files in tree_files[split].items():
                    tree.add_class(split, class_name)
                    for file in files:
                        tree.add_image(split, class_name, file.name, read_file(file), str(file))
                        bar.update()
        return tree.build(description)

    return DatasetSource("image-folder", root, description, all_files, read)


def _split_archive(folder: Path, split: str) -> Path | None:
    for suffix in SPLIT_ARCHIVE_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def _image_tarballs(folder: Path) -> DatasetSource:
    archives = {split: _split_archive(folder, split) for split in SPLITS}
    for split, archive in archives.items():
        if archive is None:
            raise DataError(f"{folder}: has the other split's tarball but no {split}.tar.gz")
    description = f"image-folder tarballs {archives['train'].name}, {archives['test'].name} (folder {folder})"

    def read(progress: bool) -> CifarData:
        tree = ImageTree(str(folder))
        for split, archive in archives.items():
            add_archive_split(tree, archive, split, progress)
        return tree.build(description)

    return DatasetSource("image-tarballs", folder, description, list(archives.values()), read)


def _detect_archive(archive: Path) -> DatasetSource:
    try:
        top = first_member_top(archive)
    except DataError as exc:
        raise DataError(f"{exc}; {ACCEPTED}") from None
    if top == PYTHON_TOP:
        return _release_archive(PYTHON_RELEASE, "python", archive)
    if top == BINARY_TOP:
        return _release_archive(BINARY_RELEASE, "binary", archive)
    if top in SPLITS:
        raise DataError(f"{archive}: holds only the {top}/ split of an image-folder tree; pass the folder that "
                        f"holds both train.tar.gz and test.tar.gz")
    if top is None:
        raise DataError(f"{archive}: empty tar archive; {ACCEPTED}")
    raise DataError(f"{archive}: archive not recognized (top folder {top!r}); {ACCEPTED}")


def _detect_folder(folder: Path) -> DatasetSource:
    try:
        names = set(os.listdir(folder))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    if names & set(PYTHON_RELEASE.all_names):
        return _release_folder(PYTHON_RELEASE, "python", folder)
    if names & set(BINARY_RELEASE.all_names):
        return _release_folder(BINARY_RELEASE, "binary", folder)
    if names & set(SPLITS):
        return _image_folder(folder)
    if any(f"{split}{suffix}" in names for split in SPLITS for suffix in SPLIT_ARCHIVE_SUFFIXES):
        return _image_tarballs(folder)
    for contained in CONTAINED_NAMES:
        if contained in names:
            return detect_source(folder / contained)
    if not names:
        raise DataError(f"{folder}: folder is empty; {ACCEPTED}")
    shown = ", ".join(sorted(names)[:6]) + (", ..." if len(names) > 6 else "")
    raise DataError(f"{folder}: no CIFAR-10 data recognized (found: {shown}); {ACCEPTED}")


def detect_source(path: str | os.PathLike) -> DatasetSource:
    """Work out which accepted layout ``path`` is; a path that matches none raises :class:`DataError`."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise DataError(f"{path}: no such file or folder; {ACCEPTED}")
    if resolved.is_dir():
        return _detect_folder(resolved)
    return _detect_archive(resolved)
