"""``load_test_split``: the data ``eval`` needs for the test split, without reading the training images.

``eval RUN --data X`` measures the test split only. With the decoded cache warm it is served from there
(training images included: one file read). On a cold cache, an image-folder tree decodes only ``test/`` and a
folder of tarballs reads only ``test.tar.gz`` (to its end, checksum included): the training images are neither
read nor validated, and nothing is cached (a partial read is not the dataset). The test classes must be the
run's classes. Other layouts (the releases, whose batches are not per-image files, and a folder of class folders,
whose test split is drawn from all of its images) are read whole, as :func:`load_cifar10` reads them.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import DataError
from .cache import load_decoded
from .cifar10 import _resolve, load_cifar10
from .cifar_data import CifarData, check_label_range
from .formats import read_file
from .image_tree import ImageTree, add_archive_split, list_tree_files
from .images import DEFAULT_RESIZE

TEST_ONLY_KINDS = ("image-folder", "image-tarballs")


def load_test_split(source: str | os.PathLike | None, classes: list[str], cache_dir: str | os.PathLike | None = None,
                    progress: bool = True, *, labels: str | None = None, resize: str = DEFAULT_RESIZE,
                    dataset: str = "cifar10", test_split: float | None = None) -> CifarData:
    """The data at ``source`` for evaluating its test split against ``classes`` (the run's). On a cold cache an
    image tree's training images are not read: the result's ``train_images`` then hold no image."""
    options = {"labels": labels, "resize": resize, "dataset": dataset, "test_split": test_split}
    if source is None:
        return load_cifar10(None, cache_dir, progress, **options)
    data_source, cache_file, key, _, _ = _resolve(source, cache_dir, progress, None, None, labels, resize, dataset,
                                                  test_split)
    if data_source.kind not in TEST_ONLY_KINDS:
        return load_cifar10(source, cache_dir, progress, **options)
    cached = load_decoded(cache_file, data_source.description, key)
    if cached is not None:
        return cached
    tree = ImageTree(str(data_source.path), resize)
    if data_source.kind == "image-folder":
        for class_name, files in list_tree_files(data_source.path)["test"].items():
            tree.add_class("test", class_name)
            for file in files:
                tree.add_image("test", class_name, file.name, read_file(file), str(file))
    else:
        archive = next(file for file in data_source.files if file.name.startswith("test."))
        add_archive_split(tree, archive, "test", progress)
    found = sorted(tree.images["test"])
    if found != sorted(classes):
        raise DataError(f"{data_source.path}: classes {found} of test/ differ from the run's {sorted(classes)}")
    empty = [name for name in found if not tree.images["test"][name]]
    if empty:
        raise DataError(f"{os.path.join(str(data_source.path), 'test', empty[0])}: class folder test/{empty[0]}/ "
                        "holds no images")
    items, test_labels = tree._ordered("test", list(classes))
    test_images = tree._stack(items)
    check_label_range(test_labels, len(classes), f"{data_source.description}: test labels")
    return CifarData(np.zeros((0, *test_images.shape[1:]), np.uint8), np.zeros(0, np.int64), test_images,
                     test_labels, list(classes), data_source.description)
