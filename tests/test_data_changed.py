"""Data that changed since the run was made (issue 21, part A): the decoded cache, the identity a run records
(data.identity in run.json) and the checks of eval --split val, eval --calibrate and train --resume; the
tree listing's refusals (OS junk, linked class folders, link loops, names that are not UTF-8)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from cifar_fixtures import make_arrays, swap_keeping_times, tar_folder, write_image_tarballs, write_image_tree
from localconv.cli.main import main
from localconv.data import load_cifar10
from localconv.data.identity import check_identity, identity_difference, identity_record
from localconv.data.loader import split_indices
from localconv.errors import DataError

CLASSES = ["cat", "dog", "frog", "ship"]


def bmp_tree(root: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> Path:
    """An image tree of BMP files: every file has the same size (3,126 bytes), so swaps keep sizes."""
    return write_image_tree(root, make_arrays(n_train, n_test, CLASSES, seed=seed), fmt="BMP")


def tree_files(root: Path, split: str = "train") -> list[Path]:
    """The split's files in dataset order (by class, then file name): position i is image i."""
    return [file for name in sorted(os.listdir(root / split)) for file in sorted((root / split / name).iterdir())]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


BAD_INPUT_MD = (Path(__file__).resolve().parents[1] / "docs" / "bad_input.md").read_text()


def refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one error line of ``localconv ARGS``, which must exit 2."""
    capsys.readouterr()
    assert main(args) == 2
    return one_error_line(capsys)


def train(data: Path, out: Path, cache: Path, *extra: str, epochs: str = "1") -> None:
    args = ["train", "--model", "tf-tutorial-conv", "--data", str(data), "--out", str(out), "--cache-dir",
            str(cache), "--epochs", epochs, "--batch-size", "10", "--device", "cpu", "--no-progress", *extra]
    assert main(args) == 0


def eval_json(run: Path, cache: Path, capsys: pytest.CaptureFixture, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--cache-dir", str(cache), "--device", "cpu", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------- decoded cache


def test_swapped_same_size_images_with_old_mtimes_are_read_again(tmp_path: Path) -> None:
    root, cache = bmp_tree(tmp_path / "tree"), tmp_path / "cache"
    before = load_cifar10(root, cache, progress=False)
    files = tree_files(root)
    a, b = files[0], files[-1]  # first cat, last ship
    assert a.stat().st_size == b.stat().st_size
    swap_keeping_times(a, b)
    after = load_cifar10(root, cache, progress=False)
    assert np.array_equal(after.train_images[0], before.train_images[-1])
    assert np.array_equal(after.train_images[-1], before.train_images[0])


def test_tarball_rewritten_with_its_old_mtime_is_read_again(tmp_path: Path) -> None:
    arrays = make_arrays(20, 8, CLASSES)
    folder, cache = write_image_tarballs(tmp_path / "tgz", arrays, tmp_path / "scratch"), tmp_path / "cache"
    before = load_cifar10(folder, cache, progress=False)
    archive = folder / "train.tar.gz"
    mtime = archive.stat().st_mtime_ns
    swap_keeping_times(*tree_files(tmp_path / "scratch")[:2])
    tar_folder(tmp_path / "scratch" / "train", archive, "train")
    os.utime(archive, ns=(mtime, mtime))
    after = load_cifar10(folder, cache, progress=False)
    assert np.array_equal(after.train_images[0], before.train_images[1])


def test_a_moved_copy_of_tarballs_uses_the_same_cache_entry(tmp_path: Path) -> None:
    folder = write_image_tarballs(tmp_path / "tgz", make_arrays(20, 8, CLASSES), tmp_path / "scratch")
    cache = tmp_path / "cache"
    first = load_cifar10(folder, cache, progress=False)
    moved = Path(shutil.copytree(folder, tmp_path / "elsewhere"))
    (folder / "train.tar.gz").unlink()  # a read of the original would fail: the entry must serve the copy
    second = load_cifar10(moved, cache, progress=False)
    assert np.array_equal(first.train_images, second.train_images) and str(moved) in second.source
    assert len(list((cache / "decoded").glob("*.npz"))) == 1


def test_a_cache_file_copied_over_another_datasets_name_is_not_used(tmp_path: Path) -> None:
    big = bmp_tree(tmp_path / "big", n_train=40, n_test=20)
    small = bmp_tree(tmp_path / "small", n_train=8, n_test=4, seed=1)
    cache = tmp_path / "cache"
    load_cifar10(big, cache, progress=False)
    big_entry = next((cache / "decoded").glob("*.npz"))
    load_cifar10(small, cache, progress=False)
    small_entry = next(p for p in (cache / "decoded").glob("*.npz") if p != big_entry)
    shutil.copyfile(big_entry, small_entry)
    with pytest.warns(UserWarning, match="written for other data"):
        data = load_cifar10(small, cache, progress=False)
    assert len(data.test_labels) == 4 and len(data.train_labels) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt under its own key: used again silently
        assert len(load_cifar10(small, cache, progress=False).test_labels) == 4


# ------------------------------------------------------------------------------------------- run identity


def test_identity_ignores_location_and_names_what_changed(tmp_path: Path) -> None:
    root = bmp_tree(tmp_path / "tree")
    data = load_cifar10(root, tmp_path / "cache", progress=False)
    recorded = identity_record(data, val_split=8)
    copy = load_cifar10(shutil.copytree(root, tmp_path / "copy"), tmp_path / "cache", progress=False)
    assert check_identity(recorded, copy, ("train", "val", "test"), 8, shown="x", consequence="y") == recorded
    assert check_identity(None, copy, ("val",), 8, shown="x", consequence="y") is None  # an older run
    (root / "train" / "dog" / "extra.bmp").write_bytes(tree_files(root)[0].read_bytes())
    grown = load_cifar10(root, tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match=r"^tree: its training split holds 41 images, 40 when the run was made "
                                        r"\(images added since: dog 10 -> 11\); why$"):
        check_identity(recorded, grown, ("val",), 8, shown="tree", consequence="why")


def test_data_md_shows_the_messages_the_checks_give() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    classes = ["airplane", "cat"]
    part = {"images": 5000, "positions_sha256": "p", "sha256": "a"}
    then = {"source_train_images": 50000, "source_per_class": [45000, 5000], "val": part}
    grown = {"source_train_images": 50100, "source_per_class": [45000, 5100], "val": part}
    changed = {**then, "val": {**part, "sha256": "b"}}
    assert identity_difference(then, then, ("val",), classes) is None
    for now, parts in ((grown, ("val",)), (changed, ("val",)),
                       ({**then, "train": {**part, "images": 45000, "sha256": "b"}}, ("train",))):
        message = identity_difference({**then, "train": {**part, "images": 45000}}, now, parts, classes)
        assert message is not None and message in docs, message


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(tree, run, cache): one epoch of tf-tutorial-conv on a BMP tree of 40 images, 8 of them held out."""
    base = tmp_path_factory.mktemp("trained")
    root, cache, run = bmp_tree(base / "tree"), base / "cache", base / "run"
    train(root, run, cache, "--val-split", "8")
    return root, run, cache


def copies(trained: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    root, run, cache = trained
    return (Path(shutil.copytree(root, tmp_path / "tree")), Path(shutil.copytree(run, tmp_path / "run")),
            Path(shutil.copytree(cache, tmp_path / "cache")))


@pytest.mark.slow
def test_eval_val_refuses_data_that_changed_and_accepts_a_moved_copy(trained, tmp_path: Path, capsys) -> None:
    root, run, cache = copies(trained, tmp_path)
    assert json.loads((run / "run.json").read_text())["data"]["identity"]["val"]["images"] == 8
    reference = eval_json(run, cache, capsys, "--split", "val", "--data", str(root))
    moved = Path(shutil.move(str(root), tmp_path / "moved"))
    assert eval_json(run, cache, capsys, "--split", "val", "--data", str(moved)) == reference
    assert reference["n"] == 8
    # a validation image swapped with a training image of another class: same count, other content
    val_positions = split_indices(40, 8)[1]
    files = tree_files(moved)
    held = files[int(val_positions[0])]
    other = next(f for i, f in enumerate(files) if f.parent != held.parent and i not in val_positions)
    swap_keeping_times(held, other)
    record = (run / "run.json").read_bytes()
    for extra in (["--split", "val"], ["--calibrate"]):
        line = refused(["eval", str(run), "--data", str(moved), "--cache-dir", str(cache), *extra], capsys)
        assert "the 8 validation images differ in content from the run's" in line and str(moved) in line
    assert (run / "run.json").read_bytes() == record  # --calibrate stored no temperature
    swap_keeping_times(held, other)
    (moved / "train" / "cat" / "new.bmp").write_bytes(files[0].read_bytes())  # one image more moves the split
    line = refused(["eval", str(run), "--data", str(moved), "--cache-dir", str(cache), "--split", "val"], capsys)
    assert "40 when the run was made (images added since: cat 10 -> 11)" in line
    # the test split is the data given: not checked against the run's
    assert eval_json(run, cache, capsys, "--data", str(moved))["n"] == 12


@pytest.mark.slow
def test_a_run_that_records_no_identity_is_evaluated_with_a_note(trained, tmp_path: Path, capsys) -> None:
    root, run, cache = copies(trained, tmp_path)
    reference = eval_json(run, cache, capsys, "--split", "val", "--data", str(root))
    meta = json.loads((run / "run.json").read_text())
    del meta["data"]["identity"]  # as an older localconv wrote it
    (run / "run.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(root), "--cache-dir", str(cache), "--split", "val", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == reference and "records no digest of its validation split" in err


@pytest.mark.slow
def test_the_test_split_drawn_from_the_runs_own_class_folders_is_checked(tmp_path: Path, capsys) -> None:
    tree = bmp_tree(tmp_path / "tree", n_train=24, n_test=4)
    folder, cache, run = tmp_path / "folders", tmp_path / "cache", tmp_path / "run"
    shutil.copytree(tree / "train", folder)  # <class>/<image>: the test split is drawn from the same files
    train(folder, run, cache)
    reference = eval_json(run, cache, capsys)
    (folder / "cat" / "9999.bmp").write_bytes(tree_files(tree)[0].read_bytes())  # moves the drawn test split
    line = refused(["eval", str(run), "--cache-dir", str(cache)], capsys)
    assert "when the run was made (images added since: cat " in line and "its test split would not" in line
    # the same folder named by --data is checked too (it was taken: a test split holding training images)
    assert "its test split would not" in refused(["eval", str(run), "--cache-dir", str(cache), "--data", str(folder)],
                                                 capsys)
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert eval_json(run, cache, capsys, "--data", str(copy))["n"] >= reference["n"]  # other data, given: taken


@pytest.mark.slow
def test_resume_refuses_other_data_and_continues_exactly_on_a_moved_copy(trained, tmp_path: Path, capsys) -> None:
    root, run, cache = copies(trained, tmp_path)
    train(root, tmp_path / "straight", cache, "--val-split", "8", epochs="2")
    other = bmp_tree(tmp_path / "other", seed=7)  # same classes, same count, other images
    args = ["train", "--resume", "--out", str(run), "--epochs", "2", "--cache-dir", str(cache), "--no-progress"]
    assert "the 32 training images differ in content from the run's" in refused([*args, "--data", str(other)], capsys)
    moved = Path(shutil.move(str(root), tmp_path / "moved"))
    assert main([*args, "--data", str(moved)]) == 0
    metas = [json.loads((folder / "run.json").read_text()) for folder in (tmp_path / "straight", run)]
    assert metas[1]["data"]["args"]["data"] == str(moved.resolve())
    assert metas[0]["data"]["identity"] == metas[1]["data"]["identity"]
    for key in ("model", "ema"):
        a, b = (load_file(str(folder / meta["files"][key]))
                for folder, meta in zip((tmp_path / "straight", run), metas))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_eval_without_data_names_the_runs_data_when_classes_differ(tmp_path: Path, capsys) -> None:
    root, cache, run = bmp_tree(tmp_path / "tree"), tmp_path / "cache", tmp_path / "run"
    train(root, run, cache)
    os.rename(root / "train" / "frog", root / "train" / "toad")
    os.rename(root / "test" / "frog", root / "test" / "toad")
    line = refused(["eval", str(run), "--cache-dir", str(cache)], capsys)
    assert f"{root.resolve()}: classes" in line and "None" not in line


@pytest.mark.parametrize("option", ["--cache-dir", "--data"])
def test_empty_path_options_are_refused(option: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path), option, ""])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("must name a file or folder, got an empty path (use . for the current folder)")
    assert err.split("error: ", 1)[1] in BAD_INPUT_MD or option == "--data"
    with pytest.raises(DataError, match="give a"):
        load_cifar10(tmp_path, "", progress=False) if option == "--cache-dir" else load_cifar10("", tmp_path)


# ------------------------------------------------------------------------------------- the tree's listing


def test_os_junk_files_are_skipped_like_hidden_ones(tmp_path: Path) -> None:
    root = bmp_tree(tmp_path / "tree", n_train=8, n_test=4)
    for junk in ("Thumbs.db", "desktop.ini", ".DS_Store"):
        (root / "train" / "cat" / junk).write_bytes(b"\0junk")
    (root / "train" / "__MACOSX").mkdir()
    (root / "test" / "ehthumbs.db").write_bytes(b"\0junk")
    data = load_cifar10(root, tmp_path / "cache", progress=False)
    assert len(data.train_labels) == 8 and data.classes == CLASSES
    (tmp_path / "tgz").mkdir()
    for split in ("train", "test"):  # the same junk inside tarballs
        tar_folder(root / split, tmp_path / "tgz" / f"{split}.tar.gz", split)
    assert len(load_cifar10(tmp_path / "tgz", tmp_path / "cache", progress=False).train_labels) == 8


@pytest.mark.parametrize("link, target, message", [
    ("train/kitty", "cat", "is the same folder as"),              # one class under two names
    ("train/cat2", "../test/cat", "is the same folder as"),       # training images that are the test images
    ("train/cat/loop.bmp", "loop.bmp", "Too many levels of symbolic links"),
    ("train/loop", "loop", "Too many levels of symbolic links"),
])
def test_links_that_duplicate_or_loop_are_one_line(link: str, target: str, message: str, tmp_path: Path,
                                                   capsys) -> None:
    root = bmp_tree(tmp_path / "tree", n_train=8, n_test=4)
    os.symlink(target, root / link)
    with pytest.raises(DataError, match=message) as refusal:
        load_cifar10(root, tmp_path / "cache", progress=False)
    shown = str(refusal.value).replace(str(root), "tree")  # docs/bad_input.md shows the tree as tree/
    assert (shown if link == "train/kitty" else shown.split(": ", 1)[1]) in BAD_INPUT_MD or link == "train/cat2"
    if link == "train/kitty":  # a link to a class folder elsewhere, reached once, is still fine
        os.unlink(root / link)
        shutil.move(str(root / "train" / "cat"), tmp_path / "cat-images")
        os.symlink(tmp_path / "cat-images", root / "train" / "cat")
        assert len(load_cifar10(root, tmp_path / "cache", progress=False).train_labels) == 8


def test_a_data_path_that_is_a_link_loop_is_one_line(tmp_path: Path, capsys) -> None:
    os.symlink("loop", tmp_path / "loop")
    line = refused(["train", "--model", "tf-tutorial-conv", "--data", str(tmp_path / "loop"), "--out",
                    str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")], capsys)
    assert "loop: cannot read (Symlink loop" in line and not (tmp_path / "run").exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_names_that_are_not_utf8(tmp_path: Path, capsys) -> None:
    root = bmp_tree(tmp_path / "tree", n_train=8, n_test=4)
    some_file = tree_files(root)[0]
    os.rename(some_file, os.fsencode(some_file.parent) + b"/\xfe.bmp")  # an image file name: read like any other
    assert len(load_cifar10(root, tmp_path / "cache", progress=False).train_labels) == 8
    for split in ("train", "test"):  # a class name: refused (it would go into run.json and reports)
        os.rename(root / split / "dog", os.fsencode(root / split) + b"/d\xffg")
    (tmp_path / "tgz").mkdir()
    for split in ("train", "test"):  # the same in tarballs (tarfile gives such names as lone surrogates too)
        tar_folder(root / split, tmp_path / "tgz" / f"{split}.tar.gz", split)
    with pytest.raises(DataError, match=r"train.tar.gz:train/d\\xffg: class folder name 'd\\xffg' is not valid"):
        load_cifar10(tmp_path / "tgz", tmp_path / "cache", progress=False)
    line = refused(["train", "--model", "tf-tutorial-conv", "--data", str(root), "--out", str(tmp_path / "run"),
                    "--cache-dir", str(tmp_path / "cache")], capsys)
    assert "/train/d\\xffg: class folder name 'd\\xffg' is not valid UTF-8" in line
    assert line.split("/train/", 1)[1] in BAD_INPUT_MD
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_class_name_that_is_not_utf8_in_run_json_is_one_line(trained, tmp_path: Path, capsys) -> None:
    root, run, cache = copies(trained, tmp_path)
    text = (run / "run.json").read_text().replace('"dog"', '"d\\udcffg"')
    (run / "run.json").write_text(text)
    line = refused(["eval", str(run), "--data", str(root), "--cache-dir", str(cache), "--confusion",
                    str(tmp_path / "cm.csv")], capsys)
    assert "is not valid UTF-8" in line and not (tmp_path / "cm.csv").exists()


@pytest.mark.parametrize("damage", ["compression method", "zip version", "flag bits", "npy header"])
def test_a_damaged_cache_entry_is_decoded_again(damage: str, tmp_path: Path) -> None:
    """Damaged bytes in an entry made zipfile raise NotImplementedError and numpy's header parser
    tokenize.TokenError, which escaped as tracebacks: any unreadable entry is only a warning, then decoded again."""
    root, cache = bmp_tree(tmp_path / "tree", n_train=8, n_test=4), tmp_path / "cache"
    reference = load_cifar10(root, cache, progress=False)
    entry = next((cache / "decoded").glob("*.npz"))
    raw = bytearray(entry.read_bytes())
    central = raw.rfind(b"PK\x01\x02")  # the last central-directory record
    at = {"compression method": central + 10, "zip version": central + 6, "flag bits": central + 8,
          "npy header": raw.find(b"{'descr'") + 1}[damage]
    raw[at] ^= 0xFF
    entry.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="ignoring unreadable decoded-data cache"):
        data = load_cifar10(root, cache, progress=False)
    assert np.array_equal(data.train_images, reference.train_images)
    assert np.array_equal(data.test_labels, reference.test_labels)


@pytest.mark.slow
def test_a_trees_own_val_folder_is_checked_like_a_val_split(tmp_path: Path, capsys) -> None:
    """The images of DATA/val (the run's validation split) were not recorded: training images copied into
    val/ after training were evaluated as validation images with exit 0."""
    root, cache, run = bmp_tree(tmp_path / "tree", n_train=16, n_test=8), tmp_path / "cache", tmp_path / "run"
    shutil.copytree(root / "test", root / "val")
    train(root, run, cache)
    assert json.loads((run / "run.json").read_text())["data"]["identity"]["val"]["images"] == 8
    reference = eval_json(run, cache, capsys, "--split", "val")
    assert eval_json(run, cache, capsys, "--split", "val", "--data", str(shutil.copytree(root, tmp_path / "copy"))) \
        == {**reference, "run": reference["run"]}
    for file in tree_files(root)[:4]:  # training images put among the validation images
        shutil.copy(file, root / "val" / file.parent.name / f"t-{file.name}")
    for extra in (["--split", "val"], ["--calibrate"]):
        line = refused(["eval", str(run), "--cache-dir", str(cache), *extra], capsys)
        assert "the run's validation images were 8, now 12" in line, line
        assert line.split("error: ", 1)[1].replace(str(root.resolve()), "tree").replace(str(run), "RUN") \
            in BAD_INPUT_MD
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the line saying which folder is which split, then why not
    assert len(err) == 2 and "Traceback" not in err[1]
    assert "the run's validation images were 8, now 12; --resume continues the run on its own data" in err[1]


@pytest.mark.slow
def test_resuming_a_run_that_records_no_identity_says_so(trained, tmp_path: Path, capsys) -> None:
    root, run, cache = copies(trained, tmp_path)
    meta = json.loads((run / "run.json").read_text())
    del meta["data"]["identity"]  # as an older localconv wrote it
    (run / "run.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--data", str(root), "--cache-dir", str(cache),
                 "--epochs", "2", "--no-progress"]) == 0
    assert "records no digest of its images" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["data"]["identity"]["val"]["images"] == 8


def test_only_localconvs_own_stale_temporaries_are_deleted(tmp_path: Path) -> None:
    """Stale ``.tmp-*`` files were deleted in the folder a file is written to, and a download is written straight
    into --cache-dir, which may be a folder of the user's files: only localconv's own temporaries may go."""
    from localconv.data.cache import _TEMP_PREFIX, atomic_file

    day_old = os.stat(tmp_path).st_mtime - 2 * 24 * 3600
    users, ours = tmp_path / ".tmp-notes.txt", tmp_path / f"{_TEMP_PREFIX}abc.gz"
    for file in (users, ours):
        file.write_bytes(b"x")
        os.utime(file, (day_old, day_old))
    with atomic_file(tmp_path / "cifar-10-python.tar.gz") as handle:
        handle.write(b"data")
    assert users.read_bytes() == b"x" and not ours.exists()
