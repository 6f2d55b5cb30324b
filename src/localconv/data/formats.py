"""Detection of the accepted dataset layouts and one reader per layout.

Accepted (see docs/data.md):

* the official python release: ``cifar-10-python.tar.gz`` or its folder ``cifar-10-batches-py/``;
* the official binary release: ``cifar-10-binary.tar.gz`` or its folder ``cifar-10-batches-bin/``;
* the CIFAR-100 python release: ``cifar-100-python.tar.gz`` or its folder ``cifar-100-python/``
  (``train``, ``test``, ``meta``), read with its fine or coarse labels (:class:`DataOptions`);
* an image-folder tree ``train/<class>/*`` + ``test/<class>/*`` (classes = sorted folder names);
* a folder holding ``train.tar.gz`` + ``test.tar.gz`` of such trees;
* a folder of class folders ``<class>/*`` without a split: a seeded, stratified test split is drawn
  (:mod:`localconv.data.class_folders`, ``DataOptions.test_split``);
* a folder that contains one of the above under its official name.

Archives are streamed with :mod:`tarfile` and their members read in memory: nothing is ever
extracted to disk, and a member with an absolute path or ``..`` makes the archive refused.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from .archive import first_member_top, iter_archive
from .cifar_data import CifarData
from .class_folders import check_test_fraction, list_class_files, looks_like_class_folders, split_class_files
from .class_folders import description as class_folders_description
from .files import MAX_BATCH_BYTES, check_file_or_folder, printable, read_regular_file
from .image_tree import SPLITS, ImageTree, add_archive_split, list_tree_files
from .images import DEFAULT_RESIZE, RESIZE_MODES
from .releases import (BINARY_RELEASE, BINARY_TOP, CIFAR100_META, CIFAR100_TOP, LABEL_SETS, PYTHON_RELEASE,
                       PYTHON_TOP, Release, assemble_release, cifar100_release)
from .subset import Selector, TrainingSubset

SPLIT_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Official names looked for inside a folder that is none of the layouts itself.
CONTAINED_NAMES = (PYTHON_TOP, BINARY_TOP, CIFAR100_TOP, "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz",
                   "cifar-100-python.tar.gz")

ACCEPTED = ("accepted: the CIFAR-10 python release (cifar-10-python.tar.gz or the folder cifar-10-batches-py/ "
            "with data_batch_1..5, test_batch, batches.meta), the binary release (cifar-10-binary.tar.gz or "
            "cifar-10-batches-bin/ with data_batch_1..5.bin, test_batch.bin, batches.meta.txt), the CIFAR-100 "
            "python release (cifar-100-python.tar.gz or cifar-100-python/ with train, test, meta), an image-folder "
            "tree (train/<class>/*, test/<class>/*), a folder holding train.tar.gz and test.tar.gz of such trees, "
            "or a folder of class folders (<class>/*: a seeded test split is drawn, --test-split)")


@dataclass(frozen=True)
class DataOptions:
    """How to read a source: CIFAR-100's label set and the image-size rule of image trees."""

    labels: str | None = None  # 'fine' | 'coarse' (CIFAR-100 only; None = fine)
    resize: str = DEFAULT_RESIZE  # 'none' | 'shorter-side' (image trees; see images.prepare_image)
    # the fraction of each class held out as test images of a <class>/<image> folder (class_folders.py)
    test_split: float | None = None

    def __post_init__(self) -> None:
        if self.test_split is not None:
            check_test_fraction(self.test_split)
        if self.labels is not None and self.labels not in LABEL_SETS:
            raise DataError(f"--labels must be one of {', '.join(LABEL_SETS)}, got {self.labels!r}")
        if self.resize not in RESIZE_MODES:
            raise DataError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")

    @property
    def tag(self) -> str:
        """What distinguishes two reads of the same files (part of the cache key)."""
        return f"labels={self.labels or 'fine'};resize={self.resize}"


def read_file(path: Path) -> bytes:
    return read_regular_file(path, MAX_BATCH_BYTES)


@dataclass
class DatasetSource:
    """A detected dataset: its kind (used in cache names), location, and how to read it."""

    kind: str
    path: Path
    description: str
    files: list[Path]  # every file the data is read from (their sizes and mtimes key the cache)
    reader: Callable[[bool], CifarData]
    listing: list[str] = field(default_factory=list)  # more of what keys the cache (folder names, options)
    # reads everything like ``reader`` but decodes only the selected training images (image trees)
    subset_reader: Callable[[bool, Selector], TrainingSubset] | None = None
    # the cache key hashes the files' bytes (a few large files); False: their stat (many small files, cache.py)
    keyed_by_content: bool = True

    def read(self, progress: bool = True) -> CifarData:
        data = self.reader(progress)
        data.validate()
        return data

    def read_training_subset(self, progress: bool, select: Selector) -> TrainingSubset:
        """The selected training images, read like :meth:`read` (every file, archives to their end); only
        a source with a ``subset_reader`` skips decoding the others."""
        if self.subset_reader is None:
            return TrainingSubset.of(self.read(progress), select)
        subset = self.subset_reader(progress, select)
        subset.validate()
        return subset


def _release_folder(release: Release, kind: str, folder: Path) -> DatasetSource:
    description = f"{release.label} (folder {folder})"

    def read(progress: bool) -> CifarData:
        present = [name for name in release.all_names if os.path.lexists(folder / name)]
        files = {name: read_file(folder / name)
                 for name in tqdm(present, desc=f"reading {folder.name}", disable=not progress)}
        return assemble_release(release, files, str(folder), f"{folder}{os.sep}", description)

    present_files = [folder / name for name in release.all_names if os.path.lexists(folder / name)]
    return DatasetSource(kind, folder, description, present_files, read)


def _release_archive(release: Release, kind: str, archive: Path) -> DatasetSource:
    description = f"{release.label} (archive {archive})"

    def read(progress: bool) -> CifarData:
        files: dict[str, bytes] = {}
        for member in iter_archive(archive, progress, desc=f"reading {archive.name}", member_limit=MAX_BATCH_BYTES):
            if len(member.parts) != 2 or member.parts[0] != release.top or member.parts[1] not in release.all_names:
                continue  # readme.html and anything else
            if member.info.isfile():
                files[member.parts[1]] = member.read()
        return assemble_release(release, files, str(archive), f"{archive}:{release.top}/", description)

    return DatasetSource(kind, archive, description, [archive], read)


def python_release_archive(archive: Path, options: DataOptions | None = None,
                           cifar100: bool = False) -> DatasetSource:
    """An official python-release archive (CIFAR-10, or CIFAR-100 with ``cifar100``), without sniffing it
    (it is md5-checked instead)."""
    options = options or DataOptions()
    archive = archive.expanduser().resolve()
    if cifar100:
        return _with_options(_release_archive(cifar100_release(options.labels or "fine"), "cifar100", archive),
                             options)
    return _with_options(_release_archive(PYTHON_RELEASE, "python", archive), options)


def _resize_note(options: DataOptions) -> str:
    if options.resize == "shorter-side":
        return "; images of other sizes: shorter side scaled to 32, centre 32x32 crop"
    return ""


def _with_options(source: DatasetSource, options: DataOptions) -> DatasetSource:
    """Refuse options that do not apply to ``source``; record the ones that do (description, cache key)."""
    if options.labels is not None and source.kind != "cifar100":
        raise DataError(f"--labels {options.labels}: only the CIFAR-100 release has fine and coarse labels; "
                        f"{source.path} holds {source.description.split(' (')[0]}")
    if options.test_split is not None and source.kind != "class-folders":
        raise DataError(f"--test-split {options.test_split:g}: only for a folder of class folders without train/ "
                        f"and test/; {source.path} holds {source.description.split(' (')[0]}, with its own test split")
    if options.tag not in source.listing:  # a folder holding a release is detected through detect_source twice
        source.listing.append(options.tag)
    return source


def _image_folder(root: Path, options: DataOptions, kind: str = "image-folder") -> DatasetSource:
    if kind == "class-folders":  # <class>/<image>: the test split is drawn (class_folders.py)
        fraction = check_test_fraction(options.test_split)
        tree_files = split_class_files(list_class_files(root), fraction)
        description = f"{class_folders_description(root, fraction)}{_resize_note(options)}"
    else:
        tree_files = list_tree_files(root)
        splits = "train/, test/" if (root / "test").is_dir() or not (root / "val").is_dir() else \
            "train/, val/ (no test/: val/ holds the evaluation images)"
        description = f"image folders {splits} (folder {root}){_resize_note(options)}"
    all_files = [file for split in SPLITS for files in tree_files[split].values() for file in files]
    # An empty class folder holds no file but must change the cache key (it makes the data invalid).
    folders = [f"{split}/{name}/" for split in SPLITS for name in tree_files[split]]

    def fill(tree: ImageTree, progress: bool) -> ImageTree:
        with tqdm(total=len(all_files), unit="img", desc=f"decoding {root.name}", disable=not progress) as bar:
            for split in SPLITS:
                for class_name, files in tree_files[split].items():
                    tree.add_class(split, class_name)
                    for file in files:
                        tree.add_image(split, class_name, file.name, read_file(file), str(file))
                        bar.update()
        return tree

    def read(progress: bool) -> CifarData:
        return fill(ImageTree(str(root), options.resize), progress).build(description)

    def read_subset(progress: bool, select: Selector) -> TrainingSubset:
        tree = fill(ImageTree(str(root), options.resize, decode_later=True), progress)
        return tree.training_subset(description, select)

    if kind == "class-folders":  # the same files split at another fraction are other data
        folders.append(f"test_split={fraction}")
    return DatasetSource(kind, root, description, all_files, read, folders, read_subset,
                         keyed_by_content=False)


def _split_archive(folder: Path, split: str) -> Path | None:
    for suffix in SPLIT_ARCHIVE_SUFFIXES:
        if os.path.lexists(folder / f"{split}{suffix}"):  # a FIFO is found, then refused when opened
            return folder / f"{split}{suffix}"
    return None


def _image_tarballs(folder: Path, options: DataOptions) -> DatasetSource:
    archives = {split: _split_archive(folder, split) for split in SPLITS}
    for split, archive in archives.items():
        if archive is None:
            raise DataError(f"{folder}: has the other split's tarball but no {split}.tar.gz")
    description = (f"image-folder tarballs {archives['train'].name}, {archives['test'].name} (folder {folder})"
                   f"{_resize_note(options)}")

    def fill(tree: ImageTree, progress: bool) -> ImageTree:
        for split, archive in archives.items():
            add_archive_split(tree, archive, split, progress)  # each archive read and verified to its end
        return tree

    def read(progress: bool) -> CifarData:
        return fill(ImageTree(str(folder), options.resize), progress).build(description)

    def read_subset(progress: bool, select: Selector) -> TrainingSubset:
        tree = fill(ImageTree(str(folder), options.resize, decode_later=True), progress)
        return tree.training_subset(description, select)

    return DatasetSource("image-tarballs", folder, description, list(archives.values()), read,
                         subset_reader=read_subset)


def _detect_archive(archive: Path, options: DataOptions) -> DatasetSource:
    try:
        top = first_member_top(archive)
    except DataError as exc:
        raise DataError(f"{exc}; {ACCEPTED}") from None
    if top == PYTHON_TOP:
        return _release_archive(PYTHON_RELEASE, "python", archive)
    if top == BINARY_TOP:
        return _release_archive(BINARY_RELEASE, "binary", archive)
    if top == CIFAR100_TOP:
        return _release_archive(cifar100_release(options.labels or "fine"), "cifar100", archive)
    if top in SPLITS:
        raise DataError(f"{archive}: holds only the {top}/ split of an image-folder tree; pass the folder that "
                        f"holds both train.tar.gz and test.tar.gz")
    if top is None:
        raise DataError(f"{archive}: empty tar archive; {ACCEPTED}")
    raise DataError(f"{archive}: archive not recognized (top folder {top!r}); {ACCEPTED}")


def _detect_folder(folder: Path, options: DataOptions) -> DatasetSource:
    try:
        names = set(os.listdir(folder))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    if names & set(PYTHON_RELEASE.all_names):
        return _release_folder(PYTHON_RELEASE, "python", folder)
    if names & set(BINARY_RELEASE.all_names):
        return _release_folder(BINARY_RELEASE, "binary", folder)
    if names & {CIFAR100_META, *SPLITS} and not any((folder / split).is_dir() for split in SPLITS):
        # cifar-100-python/: files train, test, meta (an image tree has train/ and test/ folders)
        return _release_folder(cifar100_release(options.labels or "fine"), "cifar100", folder)
    if names & set(SPLITS):
        return _image_folder(folder, options)
    if any(f"{split}{suffix}" in names for split in SPLITS for suffix in SPLIT_ARCHIVE_SUFFIXES):
        return _image_tarballs(folder, options)
    for contained in CONTAINED_NAMES:
        if contained in names:
            return detect_source(folder / contained, options)
    if looks_like_class_folders(folder, names):
        return _image_folder(folder, options, kind="class-folders")
    if not names:
        raise DataError(f"{folder}: folder is empty; {ACCEPTED}")
    shown = ", ".join(sorted(names)[:6]) + (", ..." if len(names) > 6 else "")
    raise DataError(f"{folder}: no CIFAR-10 data recognized (found: {shown}); {ACCEPTED}")


def detect_source(path: str | os.PathLike, options: DataOptions | None = None) -> DatasetSource:
    """Work out which accepted layout ``path`` is; a path that matches none raises :class:`DataError`."""
    options = options or DataOptions()
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (Python < 3.13)
        raise DataError(f"{printable(path)}: cannot read ({exc})") from None
    if not resolved.exists():
        raise DataError(f"{path}: no such file or folder; {ACCEPTED}")
    check_file_or_folder(resolved, path)  # a FIFO or device would block or never end
    if resolved.is_dir():
        return _with_options(_detect_folder(resolved, options), options)
    return _with_options(_detect_archive(resolved, options), options)
