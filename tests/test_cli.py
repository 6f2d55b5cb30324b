"""The user-facing commands, end to end, on a small image-folder dataset (and the real JPEG copy)."""
import json

import numpy as np
import pytest
from PIL import Image

from cifar_fixtures import Arrays, write_image_tree
from conftest import synthetic_cifar
from localconv.cli.main import main


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    tx, ty, sx, sy = synthetic_cifar(n_train=200, n_test=60, seed=1)
    root = tmp_path_factory.mktemp("tree")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return write_image_tree(root / "data", Arrays(tx, ty, sx, sy, classes)), root


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("LOCALCONV_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_models_lists_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tf-tutorial " in out and "1,068,298" in out and "174,250" in out
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r["params"] for r in json.loads(capsys.readouterr().out)}
    assert rows["tf-tutorial-local"] == 2_112_970


def test_train_eval_predict(tree, tmp_path, capsys):
    data, _ = tree
    run = tmp_path / "runs" / "run"  # missing parent folders are created
    assert main(["train", "--model", "tf-tutorial-conv", "--data", str(data), "--out", str(run), "--epochs", "2",
                 "--batch-size", "25", "--device", "cpu", "--no-progress", "--val-split", "50"]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["complete"] and meta["data"]["n_train"] == 150 and meta["eval_split"] == "val"
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 60 and 0 <= result["accuracy"] <= 1 and len(result["per_class"]) == 10
    assert main(["eval", str(run), "--multiview", "--confusion", str(tmp_path / "cm.csv")]) == 0
    out = capsys.readouterr().out
    assert "test precision@1 = " in out and "(multiview views" in out
    rows = (tmp_path / "cm.csv").read_text().splitlines()
    assert len(rows) == 11 and sum(int(v) for r in rows[1:] for v in r.split(",")[1:]) == 60
    img = tmp_path / "big.png"
    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(img)
    assert main(["predict", str(run), str(img), "--json", "--top-k", "4"]) == 0
    pred = json.loads(capsys.readouterr().out)[0]
    assert len(pred["top"]) == 4 and pred["top"][0]["probability"] >= pred["top"][-1]["probability"]
    assert main(["predict", str(run), str(img), "--top-k", "10", "--json"]) == 0
    assert abs(sum(t["probability"] for t in json.loads(capsys.readouterr().out)[0]["top"]) - 1) < 1e-5


def test_existing_run_needs_resume(tree, tmp_path, capsys):
    data, _ = tree
    args = ["train", "--model", "tf-tutorial-conv", "--data", str(data), "--out", str(tmp_path / "r"),
            "--epochs", "1", "--batch-size", "50", "--device", "cpu", "--no-progress", "--limit-test", "10"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args[:-9], "--epochs", "2", "--resume", "--no-progress"]) == 0
    assert json.loads((tmp_path / "r" / "run.json").read_text())["step"] == 2 * 4


@pytest.mark.slow
@pytest.mark.realdata
def test_tf_tutorial_learns_on_real_jpeg_data(shared_jpeg, tmp_path, capsys):
    """Issue 2's real-data check: 2,000 training images, 1,000 other training images held out."""
    run = tmp_path / "tf"
    assert main(["train", "--model", "tf-tutorial", "--data", str(shared_jpeg), "--out", str(run),
                 "--limit-train", "2000", "--val-split", "1000", "--batch-size", "64", "--epochs", "8",
                 "--device", "cpu", "--no-progress", "--eval-every", "0", "--limit-test", "100"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1000
    assert result["accuracy"] >= 0.30, result
