"""Damaged and unusual inputs to the data readers (issue 11 items 1, 3, 9, 13; issue 13's data side).

Each test here fails on the readers before these fixes: a damaged archive read as a shorter or
different dataset, a FIFO that blocks forever, 16-bit images clipped, an empty class folder hidden
by the cache, CIFAR-100 not read at all.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_fixtures import (
    encode_image, make_arrays, tar_folder, write_binary_release, write_cifar100_release, write_image_tree,
    write_python_release,
)
from localconv.cli.main import main
from localconv.data import CifarData, load_cifar10, prepare_image, read_image
from localconv.data import archive as archive_module
from localconv.data.formats import detect_source
from localconv.errors import DataError

CLASSES3 = ["cat", "dog", "frog"]


def read(path: Path, **options: object) -> CifarData:
    from localconv.data.formats import DataOptions

    return detect_source(path, DataOptions(**options)).read(progress=False)  # type: ignore[arg-type]


def refused(path: Path, *fragments: str, **options: object) -> str:
    with pytest.raises(DataError) as info:
        read(path, **options)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@contextlib.contextmanager
def no_hang(seconds: int = 10) -> Iterator[None]:
    """Fail (instead of blocking the suite) when the body waits on a FIFO."""
    def on_alarm(signum: int, frame: object) -> None:
        raise AssertionError(f"blocked for {seconds} s (waiting on a FIFO?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ tar streams built by hand


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    padding = (-len(data)) % tarfile.BLOCKSIZE if kind == tarfile.REGTYPE else 0
    return info.tobuf(format=tarfile.GNU_FORMAT) + (data + bytes(padding) if kind == tarfile.REGTYPE else b"")


END = bytes(2 * tarfile.BLOCKSIZE)


def split_members(split: str, arrays_images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    return [member(f"{split}/{CLASSES3[label]}/{index:04d}.png", encode_image(image))
            for index, (image, label) in enumerate(zip(arrays_images, labels))]


ARRAYS = make_arrays(n_train=9, n_test=3, classes=CLASSES3, seed=5)


def tarball_folder(tmp_path: Path, train_tar: bytes, compress: bool = True) -> Path:
    """``tmp_path/data`` with train.tar(.gz) = ``train_tar`` and a sound test.tar.gz."""
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    test_tar = b"".join(split_members("test", ARRAYS.test_images, ARRAYS.test_labels)) + END
    (folder / "test.tar.gz").write_bytes(gzip.compress(test_tar))
    if compress:
        (folder / "train.tar.gz").write_bytes(gzip.compress(train_tar))
    else:
        (folder / "train.tar").write_bytes(train_tar)
    return folder


def train_members() -> list[bytes]:
    return split_members("train", ARRAYS.train_images, ARRAYS.train_labels)


def test_sound_hand_built_archives_read_back(tmp_path: Path) -> None:
    data = read(tarball_folder(tmp_path, b"".join(train_members()) + END))
    assert data.classes == CLASSES3 and data.num_classes == 3 and len(data.train_labels) == 9


# ------------------------------------------------------------------ item 1: damaged archives


@pytest.mark.parametrize("field", ["crc", "length"])
def test_gzip_trailer_mismatch_is_refused(tmp_path: Path, field: str) -> None:
    folder = tarball_folder(tmp_path, b"".join(train_members()) + END)
    raw = bytearray((folder / "train.tar.gz").read_bytes())
    raw[-8 if field == "crc" else -4] ^= 0x40  # the trailer: CRC-32, then the length mod 2**32
    (folder / "train.tar.gz").write_bytes(bytes(raw))
    refused(folder, "train.tar.gz", "corrupt")


def test_flipped_bytes_that_still_decompress_are_refused(tmp_path: Path) -> None:
    # Like issue 11's case (bytes flipped where the stream still decompresses): a stored (level-0) gzip
    # stream of JPEG members, a few bytes flipped inside one JPEG's entropy-coded data. Only the gzip
    # CRC-32 can tell.
    jpegs = [encode_image(image, "JPEG") for image in ARRAYS.train_images]
    members = [member(f"train/{CLASSES3[label]}/{index:04d}.jpg", jpeg)
               for index, (jpeg, label) in enumerate(zip(jpegs, ARRAYS.train_labels))]
    folder = tarball_folder(tmp_path, b"".join(members) + END)
    stored = bytearray(gzip.compress(b"".join(members) + END, compresslevel=0))
    at = 15 + sum(len(m) for m in members[:4]) + tarfile.BLOCKSIZE + len(jpegs[4]) - 40  # 15: gzip + block headers
    for i in range(at, at + 8):
        stored[i] ^= 0x10
    (folder / "train.tar.gz").write_bytes(bytes(stored))
    refused(folder, "train.tar.gz", "corrupt")


@pytest.mark.parametrize("damage", ["zero-block", "bad-checksum"])
def test_member_list_cut_short_by_a_damaged_header_is_refused(tmp_path: Path, damage: str) -> None:
    # tarfile stops silently at a zero block or an unreadable header after the first: 6 of 9 images
    # would come back with no error (every class still has images).
    members = train_members()
    bad = bytearray(members[6])
    if damage == "zero-block":
        bad[:tarfile.BLOCKSIZE] = bytes(tarfile.BLOCKSIZE)
    else:
        bad[148] ^= 0x01  # one bit of the header checksum field
    folder = tarball_folder(tmp_path, b"".join(members[:6]) + bytes(bad) + b"".join(members[7:]) + END)
    refused(folder, "train.tar.gz", "corrupt archive")


@pytest.mark.parametrize("compress", ["bz2", "xz"])
def test_other_compressions_are_checked_too(tmp_path: Path, compress: str) -> None:
    import bz2
    import lzma

    tar = b"".join(train_members()) + END
    packed = bz2.compress(tar) if compress == "bz2" else lzma.compress(tar)
    folder = tarball_folder(tmp_path, tar)
    (folder / "train.tar.gz").write_bytes(packed)  # the magic bytes decide, not the suffix
    assert len(read(folder).train_labels) == 9
    (folder / "train.tar.gz").write_bytes(packed + b"junk")
    refused(folder, "train.tar.gz")
    (folder / "train.tar.gz").write_bytes(packed[:-20])
    refused(folder, "train.tar.gz")


def test_data_after_the_gzip_stream_is_refused(tmp_path: Path) -> None:
    folder = tarball_folder(tmp_path, b"".join(train_members()) + END)
    with open(folder / "train.tar.gz", "ab") as handle:
        handle.write(b"trailing garbage")
    refused(folder, "train.tar.gz")


def test_plain_tar_cut_at_a_member_boundary_is_refused(tmp_path: Path) -> None:
    members = train_members()
    folder = tarball_folder(tmp_path, b"".join(members[:7]), compress=False)  # no end-of-archive marker
    refused(folder, "train.tar", "end-of-archive marker is missing")


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    members = train_members()
    folder = tarball_folder(tmp_path, b"".join(members) + members[4] + END)
    refused(folder, "train.tar.gz:train/", "twice")


@pytest.mark.parametrize("kind,link,word", [(tarfile.SYMTYPE, "/etc/passwd", "symbolic link"),
                                            (tarfile.LNKTYPE, "train/cat/0000.png", "hard link"),
                                            (tarfile.FIFOTYPE, "", "FIFO"),
                                            (tarfile.CHRTYPE, "", "character device")])
def test_special_members_anywhere_are_refused(tmp_path: Path, kind: bytes, link: str, word: str) -> None:
    # Outside the split's folder too (such members used to be skipped there).
    folder = tarball_folder(tmp_path, member("extra", kind=kind, link=link) + b"".join(train_members()) + END)
    refused(folder, "train.tar.gz:extra", "not a regular file", word)


def test_huge_member_is_refused_from_its_header(tmp_path: Path) -> None:
    # The header claims 3 GiB; the reader must refuse before reading (no MemoryError, no 3 GiB of work).
    info = tarfile.TarInfo("train/cat/huge.png")
    info.size = 3 << 30
    folder = tarball_folder(tmp_path, info.tobuf(format=tarfile.GNU_FORMAT) + bytes(4096))
    refused(folder, "train.tar.gz:train/cat/huge.png", "3072.0 MiB", "64 MiB")


def test_archive_total_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_BYTES", 2000)
    folder = tarball_folder(tmp_path, b"".join(train_members()) + END)
    refused(folder, "train.tar.gz", "more than")


def test_damaged_archive_is_never_cached(tmp_path: Path) -> None:
    folder = tarball_folder(tmp_path, b"".join(train_members()) + END)
    raw = bytearray((folder / "train.tar.gz").read_bytes())
    raw[-8] ^= 1
    (folder / "train.tar.gz").write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    for _ in range(2):  # the second read must not find a cache entry either
        with pytest.raises(DataError, match="corrupt"):
            load_cifar10(folder, cache_dir=cache, progress=False)
    assert not list(cache.rglob("*.npz"))


def test_archives_with_the_progress_bar(tmp_path: Path) -> None:
    # The progress bar wraps the compressed stream: sound archives read, damaged ones are refused.
    folder = tarball_folder(tmp_path, b"".join(train_members()) + END)
    assert detect_source(folder).read(progress=True).num_classes == 3
    raw = bytearray((folder / "train.tar.gz").read_bytes())
    raw[-8] ^= 1
    (folder / "train.tar.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="train.tar.gz: corrupt"):
        detect_source(folder).read(progress=True)


def test_damaged_archive_through_train_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tarball_folder(tmp_path, b"".join(train_members()) + END)
    raw = bytearray((folder / "train.tar.gz").read_bytes())
    raw[-8] ^= 1
    (folder / "train.tar.gz").write_bytes(bytes(raw))
    out = tmp_path / "run"
    code = main(["train", "--model", "tf-tutorial", "--data", str(folder), "--epochs", "1", "--out", str(out),
                 "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.tar.gz: corrupt" in err[0], err
    assert not out.exists()


def test_release_meta_with_duplicate_or_blank_class_names(tmp_path: Path) -> None:
    arrays = make_arrays(n_train=10, n_test=4, seed=2)
    folder = write_python_release(tmp_path / "py", arrays)
    names = list(arrays.classes)
    names[3] = names[1]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    refused(folder, "batches.meta", "'automobile' occurs twice")
    names[3] = " "
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    refused(folder, "batches.meta", "empty")
    binary = write_binary_release(tmp_path / "bin", arrays)
    (binary / "batches.meta.txt").write_text("airplane\nautomobile\n\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    refused(binary, "batches.meta.txt:3", "blank line")


def test_python_batch_with_inconsistent_filenames(tmp_path: Path) -> None:
    arrays = make_arrays(n_train=10, n_test=4, seed=2)
    folder = write_python_release(tmp_path, arrays)
    batch = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    batch[b"filenames"] = batch[b"filenames"][:-1]
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    refused(folder, "test_batch", "'filenames' has 3 entries for 4 images")


def test_blank_class_folder_name_is_refused(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=3, n_test=3, classes=["a", "b", "c"]))
    for split in ("train", "test"):
        (root / split / "c").rename(root / split / "c ")
    refused(root, "blank or starts/ends with spaces")


# ------------------------------------------------------------------ item 9: FIFOs and special files


def test_fifo_as_data_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "data.tar.gz"
    os.mkfifo(fifo)
    with no_hang():
        refused(fifo, "FIFO")
    with no_hang(), pytest.raises(DataError, match="FIFO"):
        load_cifar10(fifo, cache_dir=tmp_path / "cache", progress=False)


def test_fifo_in_a_class_folder_is_refused_without_blocking(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=3, n_test=3, classes=["a", "b", "c"]))
    os.mkfifo(root / "train" / "b" / "pipe.png")
    with no_hang():
        refused(root, "pipe.png", "FIFO")


def test_fifo_as_split_tarball_and_as_release_file(tmp_path: Path) -> None:
    folder = tmp_path / "tarballs"
    folder.mkdir()
    os.mkfifo(folder / "train.tar.gz")
    os.mkfifo(folder / "test.tar.gz")
    with no_hang():
        refused(folder, "train.tar.gz", "FIFO")
    release = write_python_release(tmp_path / "py", make_arrays(n_train=10, n_test=4))
    (release / "data_batch_3").unlink()
    os.mkfifo(release / "data_batch_3")
    with no_hang():
        refused(release, "data_batch_3", "FIFO")


def test_fifo_given_to_predict_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(DataError, match="photo.png: cannot read image file .*FIFO"):
        read_image(fifo)


def test_oversized_image_file_for_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localconv.data import images

    path = tmp_path / "big.png"
    path.write_bytes(encode_image(ARRAYS.test_images[0]))
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(DataError, match="big.png: image file is .* MiB, more than"):
        read_image(path)


# ------------------------------------------------------------------ item 3: image modes, EXIF


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_sixteen_bit_png_reads_by_its_real_range() -> None:
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    raw = png_bytes(Image.fromarray(values))
    assert Image.open(io.BytesIO(raw)).mode == "I;16"
    rgb = prepare_image(raw, "x.png")
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(expected[:, :, None], 3, axis=2))
    assert abs(rgb.mean() - 127.5) < 1  # not ~254 (clipped)


def test_modes_convert_by_the_stated_rules() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    composite = ((rgb.astype(np.uint16) * alpha[:, :, None] + 127) // 255).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]))
    np.testing.assert_array_equal(prepare_image(png_bytes(rgba), "rgba"), composite)
    gray = rgb[:, :, 0]
    la = Image.fromarray(np.dstack([gray, alpha]), mode="LA")
    gray_composite = ((gray.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    np.testing.assert_array_equal(prepare_image(png_bytes(la), "la"), np.repeat(gray_composite[:, :, None], 3, 2))
    # a palette image with one transparent index: those pixels become black
    palette = Image.fromarray((gray // 64).astype(np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0] * 756)
    raw = png_bytes(palette, transparency=2)
    expected = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 0], [255, 255, 255]], dtype=np.uint8)[gray // 64]
    np.testing.assert_array_equal(prepare_image(raw, "p"), expected)
    # bilevel, float (0..1), 32-bit integer (16-bit range)
    bits = Image.fromarray(gray > 127)
    np.testing.assert_array_equal(prepare_image(png_bytes(bits), "1")[:, :, 0], np.where(gray > 127, 255, 0))
    floats = Image.fromarray((gray / 255.0).astype(np.float32), mode="F")
    buffer = io.BytesIO()
    floats.save(buffer, format="TIFF")
    np.testing.assert_array_equal(prepare_image(buffer.getvalue(), "f")[:, :, 0], gray)
    ints = Image.fromarray(gray.astype(np.int32) * 257, mode="I")
    buffer = io.BytesIO()
    ints.save(buffer, format="TIFF")
    np.testing.assert_array_equal(prepare_image(buffer.getvalue(), "i")[:, :, 0], gray)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, format="TIFF")
    np.testing.assert_array_equal(prepare_image(buffer.getvalue(), "cmyk"), np.asarray(cmyk.convert("RGB")))


def exif_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_in_training_and_predict_alike(tmp_path: Path) -> None:
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:8] = 255  # a white band at the top; orientation 3 = rotated 180 degrees
    raw = exif_jpeg(pixels, 3)
    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=3, n_test=3, classes=["a", "b", "c"]))
    (root / "train" / "a" / "zz-rotated.jpg").write_bytes(raw)
    (tmp_path / "rotated.jpg").write_bytes(raw)
    data = read(root)
    trained = data.train_images[np.flatnonzero(data.train_labels == 0)[-1]]  # sorted last in class a
    predicted = read_image(tmp_path / "rotated.jpg")
    np.testing.assert_array_equal(trained, predicted)
    assert trained[:, -8:].mean() > 200 and trained[:, :8].mean() < 50  # the band is now at the bottom


# ------------------------------------------------------------------ issue 13: images of any size


def test_other_sizes_refused_by_default_with_a_hint(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=3, n_test=3, classes=["a", "b", "c"]))
    (root / "test" / "b" / "wide.png").write_bytes(png_bytes(Image.new("RGB", (64, 48))))
    refused(root, "wide.png", "64x48", "--resize shorter-side")


def test_shorter_side_resize_and_centre_crop_shared_with_predict(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)  # H=48, W=80: shorter side 48 -> 32, 80 -> 53
    raw = png_bytes(Image.fromarray(pixels))
    expected = np.asarray(Image.fromarray(pixels).resize((53, 32), Image.BILINEAR))[:, 10:42]
    arrays = make_arrays(n_train=3, n_test=3, classes=["a", "b", "c"])
    root = write_image_tree(tmp_path / "tree", arrays)
    (root / "train" / "c" / "zz-photo.png").write_bytes(raw)
    (tmp_path / "photo.png").write_bytes(raw)
    data = read(root, resize="shorter-side")
    np.testing.assert_array_equal(data.train_images[-1].transpose(1, 2, 0), expected)
    np.testing.assert_array_equal(read_image(tmp_path / "photo.png"), expected.transpose(2, 0, 1))
    # 32x32 images are never resampled: the other images are the originals
    np.testing.assert_array_equal(data.test_images, arrays.test_images[np.argsort(arrays.test_labels, kind="stable")])
    assert "shorter side scaled to 32" in data.source


# ------------------------------------------------------------------ item 13: the cache key follows the listing


def test_added_empty_class_folder_is_not_hidden_by_the_cache(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=3, n_test=3, classes=["a", "b", "c"]))
    cache = tmp_path / "cache"
    assert load_cifar10(root, cache_dir=cache, progress=False).num_classes == 3
    (root / "train" / "d").mkdir()
    (root / "test" / "d").mkdir()
    with pytest.raises(DataError, match=r"train/d: class folder train/d/ holds no images"):
        load_cifar10(root, cache_dir=cache, progress=False)


def test_read_options_key_the_cache(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=3, n_test=3, classes=["a", "b", "c"]))
    (root / "train" / "a" / "zz-big.png").write_bytes(png_bytes(Image.new("RGB", (40, 40), (9, 9, 9))))
    cache = tmp_path / "cache"
    assert len(load_cifar10(root, cache_dir=cache, progress=False, resize="shorter-side").train_labels) == 4
    with pytest.raises(DataError, match="40x40"):  # not served from the shorter-side cache entry
        load_cifar10(root, cache_dir=cache, progress=False)


# ------------------------------------------------------------------ issue 13: CIFAR-100

FINE = [f"fine{i}" for i in range(6)]
COARSE_OF = [0, 0, 1, 1, 2, 2]
COARSE = ["c0", "c1", "c2"]


def cifar100(tmp_path: Path) -> tuple[Path, object]:
    arrays = make_arrays(n_train=12, n_test=6, classes=FINE, seed=9)
    return write_cifar100_release(tmp_path / "src", arrays, COARSE_OF, COARSE), arrays


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar100_fine_and_coarse(tmp_path: Path, as_archive: bool) -> None:
    folder, arrays = cifar100(tmp_path)
    source = tar_folder(folder, tmp_path / "cifar-100-python.tar.gz", "cifar-100-python") if as_archive else folder
    fine = read(source)
    assert fine.classes == FINE and fine.num_classes == 6
    np.testing.assert_array_equal(fine.train_labels, arrays.train_labels)
    np.testing.assert_array_equal(fine.train_images, arrays.train_images)
    coarse = read(source, labels="coarse")
    assert coarse.classes == COARSE
    np.testing.assert_array_equal(coarse.test_labels, np.array(COARSE_OF)[arrays.test_labels])
    assert "coarse" in coarse.source


def test_cifar100_found_inside_a_folder_and_cached_per_label_set(tmp_path: Path) -> None:
    cifar100(tmp_path)
    cache = tmp_path / "cache"
    assert load_cifar10(tmp_path / "src", cache_dir=cache, progress=False).num_classes == 6
    assert load_cifar10(tmp_path / "src", cache_dir=cache, progress=False, labels="coarse").num_classes == 3


def test_cifar100_damage_and_wrong_options(tmp_path: Path) -> None:
    folder, _ = cifar100(tmp_path)
    (folder / "meta").unlink()
    refused(folder, "missing meta")
    write_python_release(tmp_path / "c10", make_arrays(n_train=10, n_test=4))
    refused(tmp_path / "c10", "--labels coarse", "only the CIFAR-100 release", labels="coarse")
    with pytest.raises(DataError, match="fine_labels"):
        folder2, _ = cifar100(tmp_path / "again")
        batch = pickle.loads((folder2 / "train").read_bytes())
        del batch["fine_labels"]
        (folder2 / "train").write_bytes(pickle.dumps(batch, protocol=2))
        read(folder2)


def test_cli_data_options_are_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    cifar100(tmp_path)
    out = tmp_path / "run"
    code = main(["train", "--model", "tf-tutorial", "--data", str(tmp_path / "src"), "--labels", "coarse",
                 "--epochs", "1", "--batch-size", "4", "--out", str(out), "--device", "cpu", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "run.json").read_text())
    assert meta["data"]["args"]["labels"] == "coarse" and "coarse labels" in meta["data"]["source"]
    assert meta["classes"] == COARSE
    capsys.readouterr()
    # eval reads the run's data again with the recorded --labels (else: the 6 fine classes, refused)
    assert main(["eval", str(out), "--device", "cpu", "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert list(json.loads(capsys.readouterr().out)["per_class"]) == COARSE


def test_official_size_batch_with_another_md5_is_refused(tmp_path: Path) -> None:
    # A batch named like the official one and holding its 10,000 images must be the official file:
    # a flipped pixel byte leaves the pickle loadable, only the md5 tells.
    arrays = make_arrays(n_train=10, n_test=10000, seed=1)
    folder = write_python_release(tmp_path, arrays)
    refused(folder, "test_batch: md5", "differs from the official release's 40351d587109b95175f43aff81a1287e",
            "10000 images")
    smaller = write_python_release(tmp_path / "small", make_arrays(n_train=10, n_test=9999, seed=1))
    assert len(read(smaller).test_labels) == 9999  # another count: not the official file, not checked


# ----------------------------------------------------------------------------- image files linked across splits
# A test/ or val/ image file that is a symbolic or hard link to a train/ one would be trained on and evaluated on
# (issue 21, as for linked class folders): refused with one line naming the file. Links that reach a file once
# (a tree of links into a store of images) and repeated files within one split stay allowed.


def _link(kind: str, target: Path, link: Path) -> None:
    link.unlink()
    if kind == "symlink":
        link.symlink_to(target)
    else:
        os.link(target, link)


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_test_image_linked_to_a_training_image_is_refused(kind: str, tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=12, n_test=6, classes=CLASSES3, seed=1))
    train_file = sorted((root / "train" / "cat").iterdir())[0]
    test_file = sorted((root / "test" / "dog").iterdir())[0]
    _link(kind, train_file, test_file)
    with pytest.raises(DataError) as refusal:
        read(root)
    assert str(refusal.value).startswith(f"{test_file}: is the same file as {train_file} (a link)"), refusal.value


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_val_image_linked_to_a_training_image_is_one_line_and_exit_2(kind: str, tmp_path: Path, capsys) -> None:
    import shutil

    root = write_image_tree(tmp_path / "tree", make_arrays(n_train=24, n_test=9, classes=CLASSES3, seed=2))
    shutil.copytree(root / "test", root / "val")  # copies, not links: a legitimate val/ (checked below)
    val_file = sorted((root / "val" / "frog").iterdir())[0]
    train_file = sorted((root / "train" / "frog").iterdir())[-1]
    _link(kind, train_file, val_file)
    args = ["train", "--model", "tf-tutorial-conv", "--data", str(root), "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("localconv train: error:")]
    assert len(lines) == 1 and f"{val_file}: is the same file as {train_file} (a link)" in lines[0], err
    assert not (tmp_path / "r").exists()
    val_file.unlink()
    shutil.copyfile(train_file, val_file)  # the same pixels in a file of its own: not a link, read as given
    assert main(args) == 0, capsys.readouterr().err


def test_linked_image_files_that_reach_a_file_once_are_read(tmp_path: Path) -> None:
    arrays = make_arrays(n_train=12, n_test=6, classes=CLASSES3, seed=3)
    store = write_image_tree(tmp_path / "store", arrays)
    root = tmp_path / "tree"
    for file in sorted(store.rglob("*.png")):  # a tree of links into a store of images
        link = root / file.relative_to(store)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(file)
    train_cat = sorted((root / "train" / "cat").iterdir())
    os.link(store / train_cat[0].relative_to(root), root / "train" / "cat" / "zz-again.png")  # repeated in train/
    data = read(root)
    assert len(data.train_labels) == 13 and len(data.test_labels) == 6
