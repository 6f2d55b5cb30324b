"""An image folder as people keep it: ``<class>/<image>`` with no ``train/`` and ``test/`` split.

The test split is drawn here: of each class, a fixed fraction (``--test-split``, default
:data:`DEFAULT_TEST_FRACTION`) of its images in file-name order, chosen with a fixed seed
(:data:`CLASS_SPLIT_SEED`), never the training seed. Stratified (every class keeps the fraction, at least one
image in each split), seeded and a function of the file names alone: ``eval`` of a run, given the same folder,
draws the same test images, and run.json records the fraction (data args ``test_split``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .image_tree import FileIdentities, _is_hidden, list_class_folders

DEFAULT_TEST_FRACTION = 0.2
CLASS_SPLIT_SEED = 20241106  # fixed: the split must not depend on the training seed
DESCRIPTION = "image folders <class>/ without train/ and test/"


def check_test_fraction(value: float | None) -> float:
    """The fraction of each class held out as the test split (None: the default)."""
    if value is None:
        return DEFAULT_TEST_FRACTION
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DataError(f"--test-split must be a fraction between 0 and 1 (e.g. 0.2), got {value!r}")
    return float(value)


def looks_like_class_folders(folder: Path, names: set[str]) -> bool:
    """Whether ``folder`` (whose entries are ``names``) holds only folders, at least two of them (classes)."""
    shown = [name for name in names if not _is_hidden(name)]
    return len(shown) >= 2 and all((folder / name).is_dir() for name in shown)


def list_class_files(root: Path, min_per_class: int = 2, seen_folders: dict[tuple[int, int], str] | None = None,
                     seen_files: FileIdentities | None = None) -> dict[str, list[Path]]:
    """class -> image files of ``root/<class>/<image>`` (sorted; hidden entries skipped; bad entries refused);
    each class needs ``min_per_class`` images (2 to be split into training and test images). ``seen_folders``:
    (device, inode) -> path of folders already read (another split's classes): a link to one is refused;
    ``seen_files`` the same for image files (image_tree.check_file_in_one_split)."""
    classes = list_class_folders(root, {} if seen_folders is None else seen_folders, f"{root}{os.sep}", seen_files)
    for name, files in classes.items():
        if len(files) < min_per_class:
            need = "2 or more to be split into training and test images" if min_per_class == 2 else \
                f"{min_per_class} or more"
            raise DataError(f"{root / name}: class folder {name}/ holds {len(files)} image(s); each class "
                            f"needs {need}")
    return classes


def held_out_positions(count: int, fraction: float, class_index: int) -> np.ndarray:
    """Positions (in file-name order) of a class's ``count`` images that go to the test split."""
    n_test = min(count - 1, max(1, round(count * fraction)))
    rng = np.random.default_rng([CLASS_SPLIT_SEED, class_index])
    return np.sort(rng.permutation(count)[:n_test])


def split_class_files(classes: dict[str, list[Path]], fraction: float) -> dict[str, dict[str, list[Path]]]:
    """split ('train', 'test') -> class -> files: the stratified, seeded split of :func:`held_out_positions`."""
    tree: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for index, (name, files) in enumerate(sorted(classes.items())):
        chosen = set(held_out_positions(len(files), fraction, index).tolist())
        tree["test"][name] = [file for k, file in enumerate(files) if k in chosen]
        tree["train"][name] = [file for k, file in enumerate(files) if k not in chosen]
    return tree


def description(root: os.PathLike | str, fraction: float) -> str:
    return (f"{DESCRIPTION} (folder {root}); test split: {fraction:g} of each class, drawn with a fixed seed "
            "(--test-split)")
