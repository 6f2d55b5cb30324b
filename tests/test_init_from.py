"""Issue 24: trained runs go somewhere. `train --init-from RUN|FILE` and
`localconv.create_model(name, pretrained=..., checkpoint_path=...)` start from trained weights; the classifier
is re-made when the classes differ, and run.json records the source."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

import localconv
from localconv.cli.main import main
from localconv.errors import CheckpointError, ModelError
from run_fixtures import private_cache, TINY_MODEL, image_tree, train_run  # noqa: F401 (private_cache: autouse)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A 10-class run of the tiny model (2 steps)."""
    root = tmp_path_factory.mktemp("init_from")
    return train_run(image_tree(root / "data10"), root / "run10")


def body(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("softmax_linear.") and k != "temperature"}


def test_init_from_a_run_with_other_classes_remakes_the_head(source_run, tmp_path, capsys):
    data5 = image_tree(tmp_path / "data5", classes=["a", "b", "c", "d", "e"], seed=1)
    capsys.readouterr()
    # no --model: the source run's model; 0 epochs is impossible, so compare the loaded weights directly first
    from localconv.training.init_from import load_into, model_from_source, read_source

    model = model_from_source(source_run, read_source(source_run)[2])
    record = load_into(model, source_run)
    source, _ = localconv.load_run(source_run)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert record["kind"] == "run" and record["weights"] == "ema" and record["classes"] == source.classes
    run = tmp_path / "run5"
    assert main(["train", "--init-from", str(source_run), "--data", str(data5), "--out", str(run), "--epochs", "1",
                 "--batch-size", "20", "--device", "cpu", "--no-progress"]) == 0
    assert "classifier re-made" in capsys.readouterr().err
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"] == {"name": TINY_MODEL, "kwargs": {"num_classes": 5}} and meta["classes"] == list("abcde")
    src_meta = json.loads((source_run / "run.json").read_text())
    assert meta["init_from"]["path"] == str(source_run.resolve()) and meta["init_from"]["head"] == "re-made"
    assert meta["init_from"]["sha256"] == src_meta["sha256"]["ema"] and meta["init_from"]["step"] == src_meta["step"]
    model5, _ = localconv.load_run(run, which="raw")
    assert model5.num_classes == 5
    # the run is resumable and keeps its record; --init-from is refused with --resume
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["init_from"] == meta["init_from"]
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--init-from", str(source_run), "--epochs", "3"]) == 2
    assert "--init-from" in capsys.readouterr().err


def test_init_from_the_same_classes_keeps_the_head_and_a_safetensors_file(source_run, tmp_path, capsys):
    source, meta = localconv.load_run(source_run)
    data = meta["data"]["args"]["data"]
    run = tmp_path / "same"
    # with lr ~ 0 the weights stay those loaded: the head, too, is the source's
    assert main(["train", "--init-from", str(source_run), "--model", TINY_MODEL, "--data", data, "--out", str(run),
                 "--epochs", "1", "--batch-size", "20", "--device", "cpu", "--no-progress", "--lr-scale", "1e-30",
                 "--recipe-set", "ema_decay=null"]) == 0
    assert json.loads((run / "run.json").read_text())["init_from"]["head"] == "kept"
    trained, _ = localconv.load_run(run)
    for k, v in source.state_dict().items():
        assert torch.allclose(trained.state_dict()[k], v, atol=1e-6), k
    weights = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(weights))
    from localconv.training.init_from import load_into

    model = localconv.create_model(TINY_MODEL)
    record = load_into(model, weights)  # what `train --init-from w.safetensors --model ...` records
    assert record == {"path": str(weights.resolve()), "kind": "safetensors",
                      "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    capsys.readouterr()
    # a file does not name its model; a pickle is refused; weights of another model are refused
    assert main(["train", "--init-from", str(weights), "--data", data, "--out", str(tmp_path / "x")]) == 2
    assert "--model" in capsys.readouterr().err
    pickled = tmp_path / "w.pt"
    torch.save(source.state_dict(), pickled)
    assert main(["train", "--init-from", str(pickled), "--model", TINY_MODEL, "--data", data, "--out",
                 str(tmp_path / "y")]) == 2
    assert "pickled" in capsys.readouterr().err
    assert main(["train", "--init-from", str(source_run), "--model", "tf-tutorial", "--data", data, "--out",
                 str(tmp_path / "z")]) == 2
    assert "do not fit this model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_create_model_pretrained_and_checkpoint_path(source_run, tmp_path):
    source, _ = localconv.load_run(source_run)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert localconv.create_model(TINY_MODEL, pretrained=False).num_classes == 10  # timm's keyword
    with pytest.raises(ModelError, match="no pretrained weights"):
        localconv.create_model(TINY_MODEL, pretrained=True)
    with pytest.raises(ModelError, match="no pretrained weights"):
        localconv.models.create_model(TINY_MODEL, checkpoint_path=source_run)
    for path in (source_run, tmp_path / "w.safetensors"):
        save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
        model = localconv.create_model(TINY_MODEL, pretrained=True, checkpoint_path=path)
        assert torch.allclose(model.predict_proba(images), source.predict_proba(images))
        assert model.classes == (source.classes if path == source_run else None)
    five = localconv.create_model(TINY_MODEL.replace("-", "_"), checkpoint_path=source_run, num_classes=5)
    assert five.num_classes == 5 and five.classes is None
    assert body(five.state_dict()).keys() == body(source.state_dict()).keys()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in body(five.state_dict()).items())
    with pytest.raises(ModelError, match="holds tf-tutorial-conv, not 'tf-tutorial'"):
        localconv.create_model("tf-tutorial", checkpoint_path=source_run)
    with pytest.raises(CheckpointError, match="no such run folder"):
        localconv.create_model(TINY_MODEL, checkpoint_path=tmp_path / "missing")


def test_init_from_a_run_refuses_model_options_it_would_ignore(source_run, tmp_path, capsys):
    """`--init-from RUN --in-chans 1` without --model rebuilt the run's 3-channel model and trained it (exit 0):
    an option the user gave, silently dropped. It is refused; with --model the weights are checked against it."""
    data = localconv.load_run(source_run)[1]["data"]["args"]["data"]
    common = ["--data", data, "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert main(["train", "--init-from", str(source_run), "--in-chans", "1", "--out", str(tmp_path / "a"),
                 *common]) == 2
    assert "--in-chans: --init-from" in capsys.readouterr().err
    assert main(["train", "--init-from", str(source_run), "--model", TINY_MODEL, "--in-chans", "1",
                 "--out", str(tmp_path / "b"), *common]) == 2
    assert "'conv1.weight' has shape (64, 3, 5, 5), model wants (64, 1, 5, 5)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
