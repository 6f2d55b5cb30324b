"""Readers for every accepted dataset layout, the decoded cache and the bad-input errors."""
from __future__ import annotations

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_fixtures import (
    CLASSES, add_tar_member, binary_batch, encode_image, make_arrays, python_batch, tar_folder, write_binary_release,
    write_image_tarballs, write_image_tree, write_python_release,
)
from localconv.data import CIFAR10_CLASSES, CifarData, load_cifar10, read_image
from localconv.data import image_tree
from localconv.errors import DataError

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "cifar10-jpeg"


def load(source: Path, cache: Path) -> CifarData:
    return load_cifar10(source, cache_dir=cache, progress=False)


def assert_same(data: CifarData, arrays, class_sorted: bool = False) -> None:
    """Pixel-exact comparison; image trees come back sorted by class (then file name)."""
    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if class_sorted:
            order = np.argsort(labels, kind="stable")
            images, labels = images[order], labels[order]
        got_images, got_labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        assert got_images.dtype == np.uint8 and got_images.shape == images.shape
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_labels, labels)
        np.testing.assert_array_equal(got_images, images)
    assert data.classes == arrays.classes


def cache_files(cache: Path) -> list[str]:
    folder = cache / "decoded"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------ round trips


def test_class_names_constant() -> None:
    assert CIFAR10_CLASSES == CLASSES


@pytest.mark.parametrize("py2_style", [False, True], ids=["py3-protocol2", "py2-str-opcodes"])
def test_python_release_folder(tmp_path: Path, py2_style: bool) -> None:
    arrays = make_arrays(seed=1)
    folder = write_python_release(tmp_path / "src", arrays, py2_style=py2_style)
    data = load(folder, tmp_path / "cache")
    assert_same(data, arrays)
    assert "python release" in data.source and str(folder) in data.source


def test_python_release_archive(tmp_path: Path) -> None:
    arrays = make_arrays(seed=2)
    folder = write_python_release(tmp_path / "src", arrays)
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    data = load(archive, tmp_path / "cache")
    assert_same(data, arrays)
    assert "archive" in data.source and str(archive) in data.source


def test_binary_release_folder_and_archive(tmp_path: Path) -> None:
    arrays = make_arrays(seed=3)
    folder = write_binary_release(tmp_path / "src", arrays)
    assert_same(load(folder, tmp_path / "cache"), arrays)
    archive = tar_folder(folder, tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin")
    data = load(archive, tmp_path / "cache")
    assert_same(data, arrays)
    assert "binary release" in data.source


def test_release_without_meta_uses_standard_names(tmp_path: Path) -> None:
    arrays = make_arrays(seed=4)
    folder = write_binary_release(tmp_path / "src", arrays)
    (folder / "batches.meta.txt").unlink()
    assert load(folder, tmp_path / "cache").classes == CIFAR10_CLASSES


def test_image_folder_png_is_lossless(tmp_path: Path) -> None:
    arrays = make_arrays(seed=5, classes=["cat", "ant", "dog"])  # classes come back sorted
    root = write_image_tree(tmp_path / "tree", arrays)
    data = load(root, tmp_path / "cache")
    expected = make_arrays(seed=5, classes=["cat", "ant", "dog"])
    # Relabel to the sorted class order: ant=0, cat=1, dog=2.
    remap = np.array([expected.classes.index(name) for name in sorted(expected.classes)])
    inverse = np.argsort(remap)
    expected.train_labels, expected.test_labels = inverse[expected.train_labels], inverse[expected.test_labels]
    expected.classes = sorted(expected.classes)
    assert_same(data, expected, class_sorted=True)
    assert "image folders" in data.source


def test_image_folder_jpeg_and_grayscale(tmp_path: Path) -> None:
    arrays = make_arrays(n_train=10, n_test=10, seed=6)
    arrays.train_images[:] = 128  # flat images survive JPEG almost exactly
    arrays.test_images[:] = 64
    root = write_image_tree(tmp_path / "tree", arrays, fmt="JPEG")
    gray = root / "train" / "cat" / "0003.jpg"
    Image.new("L", (32, 32), 128).save(gray)
    data = load(root, tmp_path / "cache")
    assert data.train_images.shape == (10, 3, 32, 32)
    assert np.abs(data.train_images.astype(int) - 128).max() <= 2
    assert np.abs(data.test_images.astype(int) - 64).max() <= 2
    np.testing.assert_array_equal(data.train_labels, np.arange(10))


def test_image_tarballs_match_image_folder(tmp_path: Path) -> None:
    arrays = make_arrays(seed=7)
    folder = write_image_tarballs(tmp_path / "jpeg", arrays, tmp_path / "scratch")
    from_tar = load(folder, tmp_path / "cache")
    assert_same(from_tar, arrays, class_sorted=True)
    assert "tarballs" in from_tar.source


def test_hidden_files_are_skipped(tmp_path: Path) -> None:
    arrays = make_arrays(seed=8)
    folder = write_image_tarballs(tmp_path / "jpeg", arrays, tmp_path / "scratch")
    add_tar_member(folder / "train.tar.gz", "train/cat/._0003.png", b"AppleDouble junk")
    add_tar_member(folder / "train.tar.gz", "train/.DS_Store", b"junk")
    add_tar_member(folder / "train.tar.gz", "README", b"top-level files outside train/ are skipped")
    (tmp_path / "scratch" / "train" / "dog" / ".DS_Store").write_bytes(b"junk")
    assert_same(load(folder, tmp_path / "c1"), arrays, class_sorted=True)
    assert_same(load(tmp_path / "scratch", tmp_path / "c2"), arrays, class_sorted=True)


def test_folder_containing_an_official_release(tmp_path: Path) -> None:
    arrays = make_arrays(seed=9)
    write_python_release(tmp_path / "downloads", arrays)
    assert_same(load(tmp_path / "downloads", tmp_path / "cache"), arrays)


# ------------------------------------------------------------------ cache


def test_second_load_comes_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_arrays(seed=10)
    folder = write_image_tarballs(tmp_path / "jpeg", arrays, tmp_path / "scratch")
    first = load(folder, tmp_path / "cache")
    assert len(cache_files(tmp_path / "cache")) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(image_tree, "decode_dataset_image", no_decoding)
    monkeypatch.setattr(image_tree, "iter_archive", no_decoding)
    second = load(folder, tmp_path / "cache")
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(second, field), getattr(first, field))
    assert second.classes == first.classes and second.source == first.source


def test_changed_source_invalidates_cache(tmp_path: Path) -> None:
    arrays = make_arrays(seed=11)
    folder = write_binary_release(tmp_path / "src", arrays)
    load(folder, tmp_path / "cache")
    arrays.test_images[0] = 255 - arrays.test_images[0]
    (folder / "test_batch.bin").write_bytes(binary_batch(arrays.test_images, arrays.test_labels))
    stamp = time.time() + 5  # a different mtime even on coarse-grained file systems
    os.utime(folder / "test_batch.bin", (stamp, stamp))
    np.testing.assert_array_equal(load(folder, tmp_path / "cache").test_images, arrays.test_images)


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    arrays = make_arrays(seed=12)
    folder = write_binary_release(tmp_path / "src", arrays)
    load(folder, tmp_path / "cache")
    (cached,) = (tmp_path / "cache" / "decoded").iterdir()
    cached.write_bytes(cached.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="unreadable decoded-data cache"):
        assert_same(load(folder, tmp_path / "cache"), arrays)
    assert_same(load(folder, tmp_path / "cache"), arrays)  # rewritten, no warning needed


def test_killed_cache_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_arrays(seed=13)
    folder = write_binary_release(tmp_path / "src", arrays)

    def savez_then_die(handle, **arrays_to_save):
        handle.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt  # what Ctrl-C mid-write looks like

    monkeypatch.setattr(np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        load(folder, tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []
    monkeypatch.undo()
    assert_same(load(folder, tmp_path / "cache"), arrays)


def test_unwritable_cache_only_warns(tmp_path: Path) -> None:
    arrays = make_arrays(seed=14)
    folder = write_binary_release(tmp_path / "src", arrays)
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the decoded-data cache"):
        assert_same(load(folder, blocker), arrays)


# ------------------------------------------------------------------ bad input


def expect_error(source: Path, cache: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load(source, cache)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert cache_files(cache) == [], "nothing may be cached from a failed load"
    return message


def test_missing_path(tmp_path: Path) -> None:
    expect_error(tmp_path / "nowhere", tmp_path / "cache", "nowhere", "no such file", "accepted:")


def test_unrecognized_folder_and_file(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    expect_error(tmp_path / "stuff", tmp_path / "cache", "stuff", "notes.txt", "accepted:", "binary release")
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", tmp_path / "cache", "empty", "folder is empty")
    (tmp_path / "data.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    expect_error(tmp_path / "data.bin", tmp_path / "cache", "data.bin", "not a tar archive", "accepted:")
    (tmp_path / "zeros.tar").write_bytes(b"\x00" * 5000)  # end-of-archive blocks only
    expect_error(tmp_path / "zeros.tar", tmp_path / "cache", "zeros.tar", "empty tar archive")


def test_archive_with_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "x" / "other").mkdir(parents=True)
    (tmp_path / "x" / "other" / "f.txt").write_text("hi")
    archive = tar_folder(tmp_path / "x" / "other", tmp_path / "other.tar.gz", "other")
    expect_error(archive, tmp_path / "cache", "other.tar.gz", "not recognized", "'other'")


def test_single_split_tarball(tmp_path: Path) -> None:
    folder = write_image_tarballs(tmp_path / "jpeg", make_arrays(), tmp_path / "scratch")
    expect_error(folder / "train.tar.gz", tmp_path / "cache", "train.tar.gz", "both train.tar.gz and test.tar.gz")
    (folder / "test.tar.gz").unlink()
    expect_error(folder, tmp_path / "cache", "no test.tar.gz")


def test_python_release_missing_batch(tmp_path: Path) -> None:
    folder = write_python_release(tmp_path / "src", make_arrays())
    (folder / "data_batch_3").unlink()
    expect_error(folder, tmp_path / "cache", str(folder), "missing data_batch_3")


def test_truncated_batches(tmp_path: Path) -> None:
    folder = write_python_release(tmp_path / "py", make_arrays())
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:-500])
    expect_error(folder, tmp_path / "cache", str(batch), "truncated")
    folder = write_binary_release(tmp_path / "bin", make_arrays())
    batch = folder / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-7])
    expect_error(folder, tmp_path / "cache", str(batch), "3073-byte records")
    archive = tar_folder(folder, tmp_path / "b.tar.gz", "cifar-10-batches-bin")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    expect_error(archive, tmp_path / "cache", str(archive), "truncated")


def test_labels_out_of_range(tmp_path: Path) -> None:
    arrays = make_arrays()
    folder = write_python_release(tmp_path / "py", arrays)
    labels = arrays.test_labels.copy()
    labels[5] = 10
    (folder / "test_batch").write_bytes(python_batch(arrays.test_images, labels, "testing batch 1 of 1"))
    expect_error(folder, tmp_path / "cache", f"{folder / 'test_batch'}: labels[5] = 10", "0..9")
    folder = write_binary_release(tmp_path / "bin", arrays)
    labels[5], labels[7] = 0, 200
    (folder / "data_batch_4.bin").write_bytes(binary_batch(arrays.test_images[:4], labels[4:8]))
    expect_error(folder, tmp_path / "cache", "data_batch_4.bin: labels[3] = 200")


def test_python_batch_with_wrong_fields(tmp_path: Path) -> None:
    folder = write_python_release(tmp_path / "py", make_arrays())
    (folder / "data_batch_1").write_bytes(python_batch(np.zeros((2, 3, 16, 16), np.uint8), np.zeros(2), "x"))
    expect_error(folder, tmp_path / "cache", "data_batch_1", "field 'data'", "[n, 3072]")
    images = np.zeros((2, 3, 32, 32), np.uint8)
    for labels in ([1.5, 2.0], [[1], [2, 3]], ["cat", "dog"], [1]):
        batch = {b"data": images.reshape(2, -1), b"labels": labels, b"batch_label": b"x"}
        (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
        expect_error(folder, tmp_path / "cache", "data_batch_1", "field 'labels' must be 2 integers")
    (folder / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    expect_error(folder, tmp_path / "cache", "data_batch_1", "expected a pickled dict", "got list")


def test_wrong_image_size_is_not_resized(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays())
    bad = root / "test" / "dog" / "0005.png"
    Image.new("RGB", (33, 32)).save(bad)
    expect_error(root, tmp_path / "cache", str(bad), "33x32", "expected 32x32")


def test_non_image_and_truncated_image(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays())
    notes = root / "train" / "cat" / "notes.txt"
    notes.write_text("not an image")
    expect_error(root, tmp_path / "cache", str(notes), "not a readable image")
    notes.unlink()
    image = root / "train" / "cat" / "0003.png"
    image.write_bytes(image.read_bytes()[:60])
    expect_error(root, tmp_path / "cache", str(image))


def test_class_folders_differ(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays())
    (root / "test" / "ship").rename(root / "test" / "boat")
    expect_error(root, tmp_path / "cache", "different class folders", "only in train: ship", "only in test: boat")


def test_empty_class_folder_and_missing_split(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays())
    (root / "train" / "zebra").mkdir()
    expect_error(root, tmp_path / "cache", "train/zebra/ holds no images")
    (root / "train" / "zebra").rmdir()
    (root / "train" / "stray.png").write_bytes(encode_image(np.zeros((3, 32, 32), np.uint8)))
    expect_error(root, tmp_path / "cache", "stray.png", "only class folders")
    (root / "train" / "stray.png").unlink()
    for image in (root / "test").rglob("*.png"):
        image.unlink()
    expect_error(root, tmp_path / "cache", "holds no images")
    for folder in (root / "test").iterdir():
        folder.rmdir()
    expect_error(root, tmp_path / "cache", "no class folders under test/")
    (root / "test").rmdir()
    expect_error(root, tmp_path / "cache", "no test/ folder")


def test_unreadable_image(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays())
    dangling = root / "train" / "cat" / "9999.png"
    dangling.symlink_to(tmp_path / "gone.png")
    expect_error(root, tmp_path / "cache", str(dangling), "cannot read")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_batch(tmp_path: Path) -> None:
    folder = write_python_release(tmp_path / "py", make_arrays())
    (folder / "test_batch").chmod(0)
    expect_error(folder, tmp_path / "cache", str(folder / "test_batch"), "cannot read")


# ------------------------------------------------------------------ tar safety


@pytest.mark.parametrize("member", ["../escaped.png", "train/cat/../../../escaped.png", "{tmp}/escaped.png"])
def test_tar_path_traversal_is_refused(tmp_path: Path, member: str) -> None:
    member = member.format(tmp=tmp_path)  # an absolute path pointing into this test's own folder
    folder = write_image_tarballs(tmp_path / "jpeg", make_arrays(), tmp_path / "scratch")
    add_tar_member(folder / "train.tar.gz", member, encode_image(np.zeros((3, 32, 32), np.uint8)))
    before = set(tmp_path.rglob("*"))
    expect_error(folder, tmp_path / "cache", "train.tar.gz", "unsafe member path", repr(member))
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "cache"}, "nothing may be written"
    assert not (tmp_path / "escaped.png").exists()


def test_tar_traversal_in_release_archive(tmp_path: Path) -> None:
    folder = write_python_release(tmp_path / "src", make_arrays())
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    add_tar_member(archive, "cifar-10-batches-py/../../data_batch_1", b"evil")
    expect_error(archive, tmp_path / "cache", "unsafe member path")


def test_links_in_archives_are_refused(tmp_path: Path) -> None:
    folder = write_image_tarballs(tmp_path / "jpeg", make_arrays(), tmp_path / "scratch")
    add_tar_member(folder / "test.tar.gz", "test/cat/link.png", b"", kind=tarfile.SYMTYPE, link="/etc/passwd")
    expect_error(folder, tmp_path / "cache", "test/cat/link.png", "not a regular file")


def test_non_image_member_in_archive(tmp_path: Path) -> None:
    folder = write_image_tarballs(tmp_path / "jpeg", make_arrays(), tmp_path / "scratch")
    add_tar_member(folder / "test.tar.gz", "test/cat/readme.txt", b"hello")
    expect_error(folder, tmp_path / "cache", "test.tar.gz:test/cat/readme.txt", "not a readable image")


# ------------------------------------------------------------------ read_image and CifarData


def test_read_image(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(encode_image(rgb))
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)
    Image.new("RGBA", (100, 60), (10, 20, 30, 255)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), np.broadcast_to(
        np.array([10, 20, 30], np.uint8)[:, None, None], (3, 32, 32)))
    Image.new("L", (24, 24), 77).save(tmp_path / "c.jpg")
    assert read_image(str(tmp_path / "c.jpg"), size=24).shape == (3, 24, 24)
    assert read_image(tmp_path / "c.jpg", size=40).shape == (3, 40, 40)
    (tmp_path / "d.jpg").write_text("not an image")
    with pytest.raises(DataError, match="d.jpg: not a readable image"):
        read_image(tmp_path / "d.jpg")
    with pytest.raises(DataError, match="missing.png: cannot read image file"):
        read_image(tmp_path / "missing.png")


def test_validate_rejects_inconsistent_data() -> None:
    arrays = make_arrays()
    good = CifarData(arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels,
                     list(CLASSES), "test")
    good.validate()
    bad = CifarData(arrays.train_images.astype(np.float32), arrays.train_labels, arrays.test_images,
                    arrays.test_labels, list(CLASSES), "src")
    with pytest.raises(DataError, match="train images must be uint8"):
        bad.validate()
    bad = CifarData(arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels[:3],
                    list(CLASSES), "src")
    with pytest.raises(DataError, match="test labels must be int64"):
        bad.validate()
    bad = CifarData(arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels,
                    list(CLASSES[:5]), "src")
    with pytest.raises(DataError, match=r"src: train labels\[5\] = 5 is out of range 0..4"):
        bad.validate()


# ------------------------------------------------------------------ the real data


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/datasets/cifar10-jpeg is absent")
def test_real_cifar10_jpeg(tmp_path: Path) -> None:
    started = time.perf_counter()
    data = load_cifar10(REAL_DATA, cache_dir=tmp_path / "cache", progress=False)
    decoded_s = time.perf_counter() - started
    started = time.perf_counter()
    cached = load_cifar10(REAL_DATA, cache_dir=tmp_path / "cache", progress=False)
    cached_s = time.perf_counter() - started
    print(f"\nreal data: first load (decoding) {decoded_s:.1f} s, cached load {cached_s:.2f} s")
    assert data.classes == CIFAR10_CLASSES
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert 100 < data.train_images.mean() < 140  # real photographs, not blank decodes
    np.testing.assert_array_equal(cached.train_images, data.train_images)
    np.testing.assert_array_equal(cached.test_labels, data.test_labels)
