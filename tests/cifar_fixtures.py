"""Small CIFAR-style fixture datasets written in every accepted layout (shared by the data tests)."""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Arrays:
    train_images: np.ndarray  # uint8 [N, 3, 32, 32]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def make_arrays(n_train: int = 20, n_test: int = 20, classes: list[str] | None = None, seed: int = 0) -> Arrays:
    """Random images; labels cycle through the classes, so each class occurs and order is known."""
    classes = classes or CLASSES
    rng = np.random.default_rng(seed)
    return Arrays(
        rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        np.arange(n_train, dtype=np.int64) % len(classes),
        rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        np.arange(n_test, dtype=np.int64) % len(classes),
        list(classes),
    )


# ------------------------------------------------------------------ python release


class Py2StylePickler(pickle._Pickler):  # type: ignore[misc, name-defined]
    """Writes ``bytes`` as Python-2 ``str`` opcodes (BINSTRING), as the official batches are."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def pickle_batch(obj: object, py2_style: bool = False) -> bytes:
    if not py2_style:
        return pickle.dumps(obj, protocol=2)
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    # numpy arrays pickled by Python 2 name the old module path.
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def python_batch(images: np.ndarray, labels: np.ndarray, label: str, py2_style: bool = False) -> bytes:
    batch = {
        b"batch_label": label.encode(),
        b"labels": [int(x) for x in labels],
        b"data": np.ascontiguousarray(images.reshape(len(images), -1)),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    return pickle_batch(batch, py2_style)


def write_python_release(parent: Path, arrays: Arrays, py2_style: bool = False) -> Path:
    """``parent/cifar-10-batches-py/`` with data_batch_1..5, test_batch, batches.meta, readme.html."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index, (images, labels) in enumerate(zip(np.array_split(arrays.train_images, 5),
                                                  np.array_split(arrays.train_labels, 5)), start=1):
        (folder / f"data_batch_{index}").write_bytes(
            python_batch(images, labels, f"training batch {index} of 5", py2_style))
    (folder / "test_batch").write_bytes(
        python_batch(arrays.test_images, arrays.test_labels, "testing batch 1 of 1", py2_style))
    meta = {b"label_names": [name.encode() for name in arrays.classes], b"num_cases_per_batch": 10000,
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle_batch(meta, py2_style))
    (folder / "readme.html").write_text("<html>not data</html>")
    return folder


def write_cifar100_release(parent: Path, arrays: Arrays, coarse_of: list[int], coarse_names: list[str]) -> Path:
    """``parent/cifar-100-python/`` with train, test, meta in the official format (``fine_labels`` +
    ``coarse_labels``, ``fine_label_names`` + ``coarse_label_names``); ``coarse_of[fine] = coarse``."""
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                 ("test", arrays.test_images, arrays.test_labels)):
        batch = {
            "filenames": [f"img_{i:05d}.png" for i in range(len(images))],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": [int(x) for x in labels],
            "coarse_labels": [coarse_of[int(x)] for x in labels],
            "data": np.ascontiguousarray(images.reshape(len(images), -1)),
        }
        (folder / name).write_bytes(pickle_batch(batch))
    meta = {"fine_label_names": list(arrays.classes), "coarse_label_names": list(coarse_names)}
    (folder / "meta").write_bytes(pickle_batch(meta))
    return folder


# ------------------------------------------------------------------ binary release


def binary_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    return records.tobytes()


def write_binary_release(parent: Path, arrays: Arrays) -> Path:
    """``parent/cifar-10-batches-bin/`` with data_batch_1..5.bin, test_batch.bin, batches.meta.txt."""
    folder = parent / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for index, (images, labels) in enumerate(zip(np.array_split(arrays.train_images, 5),
                                                  np.array_split(arrays.train_labels, 5)), start=1):
        (folder / f"data_batch_{index}.bin").write_bytes(binary_batch(images, labels))
    (folder / "test_batch.bin").write_bytes(binary_batch(arrays.test_images, arrays.test_labels))
    (folder / "batches.meta.txt").write_text("\n".join(arrays.classes) + "\n\n")
    return folder


# ------------------------------------------------------------------ image folders and tarballs


def encode_image(image_chw: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_chw.transpose(1, 2, 0)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image_tree(root: Path, arrays: Arrays, fmt: str = "PNG") -> Path:
    """``root/train/<class>/NNNN.png`` and ``root/test/<class>/NNNN.png``, numbered in label order."""
    suffix = ".png" if fmt == "PNG" else ".jpg"
    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        for class_name in arrays.classes:
            (root / split / class_name).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            (root / split / arrays.classes[label] / f"{index:04d}{suffix}").write_bytes(encode_image(image, fmt))
    return root


def tar_folder(source: Path, archive: Path, arcname: str) -> Path:
    """Archive ``source`` as ``arcname/...`` (gzip when the name ends in .gz)."""
    mode = "w:gz" if archive.name.endswith(".gz") else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(source, arcname=arcname)
    return archive


def write_image_tarballs(folder: Path, arrays: Arrays, scratch: Path) -> Path:
    """``folder/train.tar.gz`` and ``folder/test.tar.gz`` like ../shared/datasets/cifar10-jpeg."""
    tree = write_image_tree(scratch, arrays)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        tar_folder(tree / split, folder / f"{split}.tar.gz", split)
    return folder


def add_tar_member(archive: Path, name: str, data: bytes, kind: bytes = tarfile.REGTYPE,
                   link: str = "") -> None:
    """Rewrite the gzip archive with one extra member (tarfile cannot append to compressed archives)."""
    with tarfile.open(archive, "r:*") as tar:
        members = [(info, tar.extractfile(info).read() if info.isfile() else None) for info in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def swap_keeping_times(a: Path, b: Path) -> None:
    """Swap two files' bytes and give each its old mtime back (as files extracted from one tarball look)."""
    times = a.stat().st_mtime_ns, b.stat().st_mtime_ns
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    os.utime(a, ns=(times[0], times[0]))
    os.utime(b, ns=(times[1], times[1]))
