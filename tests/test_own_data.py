"""Issue 24, "Data as people keep it": grayscale trees, --in-chans, --dataset against --data, resize_images."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import localconv
from cifar_fixtures import Arrays, make_arrays, write_cifar100_release, write_image_tree
from conftest import synthetic_cifar
from localconv.cli.main import main
from localconv.errors import DataError


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("LOCALCONV_CACHE", str(tmp_path_factory.getbasetemp() / "cache-own-data"))


def write_gray_tree(root, n_train: int = 60, n_test: int = 20):
    """train/<class>/*.png and test/<class>/*.png saved as 8-bit grayscale (mode L) files."""
    tx, ty, sx, sy = synthetic_cifar(n_train=n_train, n_test=n_test, seed=4, classes=3)
    for split, images, labels in (("train", tx, ty), ("test", sx, sy)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0]).save(folder / f"{index:03d}.png")  # one channel: mode L
    return root


@pytest.fixture(scope="module")
def gray_tree(tmp_path_factory):
    return write_gray_tree(tmp_path_factory.mktemp("gray") / "data")


def test_dataset_option_must_agree_with_the_data(tmp_path, capsys):
    tree = write_image_tree(tmp_path / "tree", make_arrays(10, 10))
    code = main(["train", "--model", "tf-tutorial-conv", "--dataset", "cifar100", "--data", str(tree),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--dataset cifar100:" in err and "not CIFAR-100" in err, err
    assert not (tmp_path / "run").exists()
    from localconv.data.dataset_option import check_dataset_option

    release = write_cifar100_release(tmp_path, make_arrays(10, 10, classes=[f"f{i}" for i in range(4)]),
                                     coarse_of=[0, 0, 1, 1], coarse_names=["c0", "c1"])
    with pytest.raises(DataError, match="--dataset cifar10: .* not CIFAR-10;"):
        check_dataset_option(release, "cifar10")
    check_dataset_option(release, "cifar100")  # agreeing: no error
    check_dataset_option(tree, "cifar10")      # an image tree may hold CIFAR-10
    with pytest.raises(DataError, match="--dataset cifar100: .* not CIFAR-100;"):  # was: recorded as cifar100
        check_dataset_option(write_class_folders(tmp_path / "flowers"), "cifar100")


@pytest.mark.slow
def test_grayscale_tree_is_said_to_be_read_as_rgb_and_in_chans_1_trains_on_one(gray_tree, tmp_path, capsys):
    common = ["--model", "tf-tutorial-conv", "--data", str(gray_tree), "--epochs", "1", "--batch-size", "20",
              "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--out", str(tmp_path / "rgb")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("note: grayscale images, read as RGB (three equal channels)"), err
    assert main(["train", *common, "--in-chans", "1", "--out", str(tmp_path / "one")]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "note: grayscale images, read as one channel (--in-chans 1)"
    meta = json.loads((tmp_path / "one" / "run.json").read_text())
    assert meta["model"]["kwargs"]["in_chans"] == 1
    model, _ = localconv.load_run(tmp_path / "one")
    assert model.conv1.weight.shape[1] == 1
    assert main(["eval", str(tmp_path / "one"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
    image = next((gray_tree / "test" / "class0").iterdir())
    rgb = tmp_path / "rgb.png"  # an RGB file: read as its luma, by the run folder and by its ONNX export
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(rgb)
    assert main(["predict", str(tmp_path / "one"), str(image), str(rgb), "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert from_run[0]["top"][0]["class"].startswith("class")
    import importlib.util

    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")):
        onnx_file = tmp_path / "one.onnx"
        assert main(["export", str(tmp_path / "one"), "--out", str(onnx_file)]) == 0
        capsys.readouterr()
        assert json.loads((tmp_path / "one.onnx.json").read_text())["input"]["channels"].startswith("luma of RGB")
        assert main(["predict", str(onnx_file), str(image), str(rgb), "--json"]) == 0  # was: a shape refusal
        for a, b in zip(json.loads(capsys.readouterr().out), from_run):
            assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
            assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]],
                                                                          abs=1e-5)


def test_in_chans_is_refused_for_models_with_fixed_channels(tmp_path, capsys):
    assert main(["train", "--model", "cc-11pct", "--in-chans", "1", "--data", str(tmp_path),
                 "--out", str(tmp_path / "run")]) == 2
    assert "in_chans" in capsys.readouterr().err


def test_channels_helpers():
    from localconv.data.channels import equal_channels, to_channels

    rgb = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    gray = np.repeat(rgb[:, :1], 3, axis=1)
    assert equal_channels(gray) and not equal_channels(rgb)
    assert np.array_equal(to_channels(gray, 1), gray[:, :1])  # three equal channels: that channel exactly
    expected = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).convert("L")) for im in rgb])[:, None]
    assert np.array_equal(to_channels(rgb, 1), expected)  # Pillow's own luma
    assert to_channels(rgb, 3) is rgb


def test_resize_images_lets_predict_proba_take_a_64x64_batch(tmp_path):
    model = localconv.create_model("tf-tutorial-conv").eval()
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 64, 48), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"localconv\.resize_images\(images\)"):
        model.predict_proba(batch)  # its message names the way out
    small = localconv.resize_images(batch)
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 32, 32)
    assert torch.allclose(model.predict_proba(small).sum(1), torch.ones(2))
    # exactly what predict does with the same picture as a file
    path = tmp_path / "x.png"
    Image.fromarray(batch[0].permute(1, 2, 0).numpy()).save(path)
    from localconv.data import read_image

    assert np.array_equal(read_image(path), small[0].numpy())
    assert np.array_equal(localconv.resize_images(small.numpy()), small.numpy())  # 32x32: untouched
    one = localconv.resize_images(batch[:, :1])  # one channel: resized per channel
    assert one.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        localconv.resize_images(batch.float())


def write_class_folders(root, per_class=(10, 7, 5), fmt="JPEG"):
    """root/<class>/NNNN.jpg with no train/ and test/ (images of 40x48, as photos would be: any size)."""
    rng = np.random.default_rng(6)
    for c, count in enumerate(per_class):
        folder = root / ["daisy", "rose", "tulip"][c]
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(rng.normal(60 + 70 * c, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i + 1:04d}.jpg", format=fmt)
    return root


def test_class_folders_get_a_seeded_stratified_test_split(tmp_path, capsys):
    from localconv.data.class_folders import list_class_files, split_class_files
    from localconv.data.formats import DataOptions, detect_source

    root = write_class_folders(tmp_path / "flowers")
    files = list_class_files(root)
    split = split_class_files(files, 0.2)
    assert {c: len(v) for c, v in split["test"].items()} == {"daisy": 2, "rose": 1, "tulip": 1}  # each class
    for c in files:
        assert sorted(split["train"][c] + split["test"][c]) == files[c] and not set(split["train"][c]) & set(
            split["test"][c])
    assert split == split_class_files(list_class_files(root), 0.2)  # a function of the file names alone
    assert split_class_files(files, 0.5)["test"]["daisy"] != split["test"]["daisy"]
    source = detect_source(root, DataOptions(resize="shorter-side"))
    assert source.kind == "class-folders" and "0.2 of each class" in source.description
    with pytest.raises(DataError, match="--test-split 0.3: only for a folder of class folders"):
        detect_source(write_image_tree(tmp_path / "tree", make_arrays(10, 10)), DataOptions(test_split=0.3))
    (root / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: unexpected file"):
        list_class_files(root)


def _readme_block(title: str) -> list[str]:
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text.split(f"### {title}\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_use_your_own_data_commands_run(tmp_path, capsys, monkeypatch):
    """The README's "Use your own data" commands, as written, in a folder holding `flowers/` (train gets one
    epoch of small batches on the CPU here, appended to its command line)."""
    import shlex

    write_class_folders(tmp_path / "flowers")
    monkeypatch.chdir(tmp_path)
    commands = _readme_block("Use your own data")
    assert [c.split()[1] for c in commands] == ["train", "eval", "predict"]
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "train":
            argv += ["--epochs", "1", "--batch-size", "6", "--device", "cpu", "--no-progress"]
        assert main(argv) == 0, command
    out, err = capsys.readouterr()
    assert "data: image folders <class>/ without train/ and test/" in err
    assert "; 4 of 22 images held out\n" in err  # the count, not only the fraction
    meta = json.loads((tmp_path / "runs" / "flowers" / "run.json").read_text())
    assert meta["data"]["args"]["test_split"] == 0.2 and meta["data"]["n_test"] == 4
    assert "test precision@1 = " in out and " on 4 images " in out  # eval: the same 4 held-out images
    assert "flowers/daisy/0001.jpg: " in out


@pytest.fixture(scope="module")
def val_trees(tmp_path_factory):
    """``full``: train/ + val/ + test/ (val/ = test/ less 3 images of class a); ``no_test``: train/ + val/."""
    import shutil

    tx, ty, sx, sy = synthetic_cifar(n_train=60, n_test=24, seed=7, classes=3)
    base = tmp_path_factory.mktemp("val-trees")
    full = write_image_tree(base / "full", Arrays(tx, ty, sx, sy, ["a", "b", "c"]))
    shutil.copytree(full / "test", full / "val")
    for file in sorted((full / "val" / "a").iterdir())[:3]:
        file.unlink()
    for split in ("train", "val"):
        shutil.copytree(full / split, base / "no-test" / split)
    return full, base / "no-test"


@pytest.mark.slow
def test_val_folder_is_the_validation_split(val_trees, tmp_path, capsys):
    full, no_test = val_trees
    common = ["--model", "tf-tutorial-conv", "--epochs", "1", "--batch-size", "20", "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--data", str(full), "--out", str(tmp_path / "full")]) == 0
    out, err = capsys.readouterr()
    assert f"data: {full / 'val'} is the validation split (21 images, evaluated during training); test/ is the " \
           "test split" in err
    assert "val accuracy" in out and "done: step 3, val accuracy" in err
    meta = json.loads((tmp_path / "full" / "run.json").read_text())
    assert (meta["eval_split"], meta["data"]["n_val"], meta["data"]["n_test"]) == ("val", 21, 24)
    assert main(["eval", str(tmp_path / "full"), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 21
    assert main(["eval", str(tmp_path / "full"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 24
    # train/ + val/ only: val/ is the run's val split, and plain eval says to ask for it
    assert main(["train", *common, "--data", str(no_test), "--out", str(tmp_path / "no-test")]) == 0
    assert "there is no test/ split" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "no-test"), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 21
    assert main(["eval", str(tmp_path / "no-test")]) == 2
    assert "has no test/ folder; its val/ images are" in capsys.readouterr().err
    # the temperature is fitted on val/, the run's validation split (it was refused: "without --val-split")
    assert main(["eval", str(tmp_path / "no-test"), "--split", "val", "--calibrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["n_val"] == 21
    assert main(["eval", str(tmp_path / "full"), "--calibrate", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n"], result["calibration"]["n_val"]) == (24, 21)  # fitted on val/, measured on test/
    stored = json.loads((tmp_path / "full" / "run.json").read_text())["temperature"]
    assert stored == pytest.approx(result["temperature"], rel=1e-6)  # the model holds it as float32
    assert main(["train", *common, "--data", str(full), "--val-split", "5", "--out", str(tmp_path / "two")]) == 2
    assert "has its own val/ folder" in capsys.readouterr().err and not (tmp_path / "two").exists()


def test_val_folder_must_hold_the_training_classes(val_trees, tmp_path):
    import shutil

    from localconv.data.val_folder import read_val_folder

    full, _ = val_trees
    val = shutil.copytree(full / "val", tmp_path / "val")
    shutil.rmtree(val / "c")
    with pytest.raises(DataError, match=r"val/ and train/ have different class folders .*missing in val: c"):
        read_val_folder(val, ["a", "b", "c"])
    shutil.rmtree(val)
    val.mkdir()
    with pytest.raises(DataError, match=r"val/ holds no class folders"):
        read_val_folder(val, ["a", "b", "c"])


def test_eval_of_the_test_split_does_not_read_the_training_images(tmp_path, capsys):
    import shutil

    from cifar_fixtures import tar_folder

    tree = write_image_tree(tmp_path / "tree", make_arrays(20, 12, classes=["a", "b", "c"]))
    run = tmp_path / "run"
    assert main(["train", "--model", "tf-tutorial-conv", "--data", str(tree), "--out", str(run), "--epochs", "0.5",
                 "--batch-size", "10", "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "c1")]) == 0
    assert "0.5 epochs = 1 step of 10 " in capsys.readouterr().err  # was: "1 steps"
    assert main(["eval", str(run), "--json", "--cache-dir", str(tmp_path / "c2")]) == 0  # a cold cache
    expected = json.loads(capsys.readouterr().out)
    assert expected["n"] == 12 and not (tmp_path / "c2").exists()  # a partial read is not cached
    # a damaged training image (or training tarball) does not stop an evaluation of the test split
    damaged = shutil.copytree(tree, tmp_path / "damaged")
    next((damaged / "train" / "a").iterdir()).write_bytes(b"not an image")
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    tar_folder(tree / "test", tarballs / "test.tar.gz", "test")
    (tarballs / "train.tar.gz").write_bytes(b"not a tar archive")
    for data in (damaged, tarballs):
        assert main(["eval", str(run), "--data", str(data), "--json", "--cache-dir", str(tmp_path / "c3")]) == 0
        result = json.loads(capsys.readouterr().out)
        assert (result["n"], result["accuracy"]) == (12, expected["accuracy"])
    # the training split still is read, and checked, when it is needed
    assert main(["eval", str(run), "--data", str(damaged), "--calibrate", "--cache-dir", str(tmp_path / "c3")]) == 2
    assert "train/a/" in capsys.readouterr().err  # the damaged training image is named


def test_limit_test_and_linked_class_folders_beside_val(val_trees, tmp_path, capsys):
    """train/ + val/ without test/: --limit-test would trim the validation split (eval --split val reads it
    whole), so it is refused; a val/ class folder that is a link to a train/ one would validate on training
    images, so it is refused too."""
    import shutil

    full, no_test = val_trees
    common = ["--model", "tf-tutorial-conv", "--epochs", "1", "--batch-size", "20", "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--data", str(no_test), "--limit-test", "5", "--out", str(tmp_path / "r")]) == 2
    assert "--limit-test 5: " in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["eval", str(tmp_path / "r"), "--split", "val", "--limit-test", "5"]) == 2  # was ignored
    assert "--split val evaluates the run's whole validation split" in capsys.readouterr().err
    linked = shutil.copytree(full, tmp_path / "linked")
    shutil.rmtree(linked / "val" / "b")
    (linked / "val" / "b").symlink_to(linked / "train" / "b")
    assert main(["train", *common, "--data", str(linked), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "val/b: is the same folder as " in err and "train/b (a link)" in err and not (tmp_path / "r").exists()


def test_val_folder_is_cached_and_named_in_messages(val_trees, tmp_path, monkeypatch):
    import shutil

    from localconv.data import val_folder
    from localconv.data.cifar10 import load_cifar10

    full, no_test = val_trees
    first = val_folder.read_val_folder(full / "val", ["a", "b", "c"], cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "decoded").glob("val-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(val_folder, "decode_dataset_image", no_decoding)
    again = val_folder.read_val_folder(full / "val", ["a", "b", "c"], cache_dir=tmp_path / "cache")
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    with pytest.raises(AssertionError, match="decoded again"):  # another class order: other labels, other key
        val_folder.read_val_folder(full / "val", ["c", "b", "a"], cache_dir=tmp_path / "cache")
    # a train/ + val/ tree names val/, not a test/ folder it does not have
    odd = shutil.copytree(no_test, tmp_path / "odd")
    (odd / "val" / "c").rename(odd / "val" / "z")
    with pytest.raises(DataError, match=r"train/ and val/ have different class folders \(only in train: c; only "
                                        r"in val: z\)"):
        load_cifar10(odd, cache_dir=tmp_path / "cache", progress=False)


def test_run_json_data_args_are_checked():
    """The read options eval and --resume reuse from run.json: a hand-edited value is one line naming it."""
    import copy

    from test_run_schema import GOOD
    from localconv.errors import CheckpointError
    from localconv.training.run_schema import validate_run_meta

    def with_args(**args):
        meta = copy.deepcopy(GOOD)
        meta["data"]["args"].update(args)
        return meta

    validate_run_meta(with_args(test_split=0.2, val_folder=True, resize="shorter-side", dataset="cifar10",
                                labels=None), "run.json")
    for field, value, expected in (("test_split", 0, "a number in (0, 1)"), ("test_split", 1.5, "(0, 1)"),
                                   ("test_split", "0.2", "(0, 1)"), ("test_split", float("nan"), "(0, 1)"),
                                   ("val_folder", "yes", "true or false"), ("resize", "crop", "none, shorter-side"),
                                   ("dataset", "imagenet", "cifar10, cifar100"), ("labels", 3, "a string")):
        with pytest.raises(CheckpointError, match=rf"data\.args\.{field}.*{re.escape(expected)}"):
            validate_run_meta(with_args(**{field: value}), "run.json")


def test_one_channel_model_on_colour_images_says_so(tmp_path, capsys):
    """A 1-channel model (--in-chans 1, or one inherited with --init-from) reads colour images as their luma:
    the first line says so (it trained on luma silently)."""
    tree = write_image_tree(tmp_path / "tree", make_arrays(10, 10, classes=["a", "b"]))
    assert main(["train", "--model", "tf-tutorial-conv", "--in-chans", "1", "--data", str(tree), "--out",
                 str(tmp_path / "run"), "--epochs", "0.5", "--batch-size", "10", "--device", "cpu",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "note: the model takes one channel: colour images are read as their luma", err
