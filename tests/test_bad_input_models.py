"""Class counts, cfg sizes and weights through the CLI: a correct result or one line with exit 2.

* data of 3, 9 and 11 classes trains a built-in model with that many outputs (recorded in run.json),
  and ``eval`` / ``predict`` use the run's classes (issue 11, item 2);
* a cfg file whose output layer does not match the data is refused at its line, before any folder
  is created; so is a layer too large for this machine, before anything is allocated (item 10);
* a quoted cfg value is cut in the message; NaN weights are refused by eval (item 5).
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from cifar_fixtures import make_arrays, write_image_tree
from safetensors.torch import load_file, save_file
from test_bad_input import assert_one_error, run_cli, snapshot
from test_cfg_builder import LAYERS, PARAMS, line_of

import localconv
from localconv.cli.main import main
from localconv.configs import memory
from localconv.training.checkpoint import sha256_file

# class count -> the model trained on it (a cfg-built network, the tutorial's two tops)
CLASS_CASES = {3: "cc-80sec", 9: "tf-tutorial-conv", 11: "tf-tutorial"}


def class_names(k: int) -> list[str]:
    return [f"kind{i:02d}" for i in range(k)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, Path]]:
    """k -> (data tree, run folder) after one epoch on 44 images of k classes."""
    root = tmp_path_factory.mktemp("classes")
    runs = {}
    for k, model in CLASS_CASES.items():
        data = write_image_tree(root / f"data{k}", make_arrays(n_train=44, n_test=22, classes=class_names(k),
                                                               seed=k))
        run = root / f"run{k}"
        assert main(["train", "--model", model, "--data", str(data), "--cache-dir", str(root / "cache"),
                     "--out", str(run), "--epochs", "1", "--batch-size", "22", "--device", "cpu",
                     "--no-progress"]) == 0
        runs[k] = (data, run)
    return runs


@pytest.fixture(autouse=True)
def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALCONV_CACHE", str(tmp_path / "cache"))  # never ~/.cache


@pytest.mark.parametrize("k", sorted(CLASS_CASES))
def test_any_class_count_trains_evaluates_and_predicts(k: int, trained: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    data, run = trained[k]
    meta = json.loads((run / "run.json").read_text())
    assert meta["classes"] == class_names(k)
    assert meta["model"] == {"name": CLASS_CASES[k], "kwargs": {"num_classes": k}}
    model, _ = localconv.load_run(run)
    assert model.num_classes == k and model.classes == class_names(k)
    assert model.pretrained_cfg["classes"] == class_names(k)
    capsys.readouterr()

    confusion = tmp_path / "cm.csv"
    assert main(["eval", str(run), "--confusion", str(confusion), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["per_class"]) == class_names(k) and out["n"] == 22
    rows = list(csv.reader(confusion.open()))
    assert rows[0] == ["true\\pred", *class_names(k)] and [r[0] for r in rows[1:]] == class_names(k)
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == 22 and all(len(r) == k + 1 for r in rows)

    image = min((data / "test").rglob("*.png"))
    assert main(["predict", str(run), str(image), "--top-k", "10", "--json"]) == 0
    captured = capsys.readouterr()
    top = json.loads(captured.out)[0]["top"]
    assert len(top) == min(k, 10) and {t["class"] for t in top} <= set(class_names(k))
    assert ("more than the run's" in captured.err) == (k < 10)


def test_run_classes_that_do_not_match_the_model_are_refused(trained: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(trained[3][1], tmp_path / "run"))
    meta = json.loads((run / "run.json").read_text())
    meta["classes"] = meta["classes"][:2]
    (run / "run.json").write_text(json.dumps(meta))
    rc, lines = run_cli(["predict", str(run), str(min((trained[3][0] / "test").rglob("*.png")))], capsys)
    assert_one_error("predict", rc, lines, ("run.json: field 'classes' names 2 classes", "gives 3 scores"))


def test_cfg_output_layer_must_match_the_data(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "layers.cfg").write_text(LAYERS)
    (tmp_path / "params.cfg").write_text(PARAMS)
    before = snapshot(tmp_path)
    rc, lines = run_cli(["train", "--cfg", str(tmp_path / "layers.cfg"), "--params", str(tmp_path / "params.cfg"),
                         "--data", str(trained[3][0]), "--cache-dir", str(trained[3][0].parent / "cache"),
                         "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu", "--no-progress"],
                        capsys)
    line = line_of(LAYERS, "fc10", "outputs")
    assert_one_error("train", rc, lines, (f"layers.cfg:{line}: [fc10]", "10 class scores",
                                          "data has 3 classes (kind00, kind01, kind02)", "outputs=3"))
    assert snapshot(tmp_path) == before  # no run folder


def test_a_cfg_too_large_for_memory_is_refused_before_allocating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # issue 11 item 10: fc10 with 2,000,000 outputs = 1.15e9 parameters (4.6 GB of weights alone)
    layers = LAYERS.replace("outputs=10", "outputs=2000000")
    (tmp_path / "layers.cfg").write_text(layers)
    (tmp_path / "params.cfg").write_text(PARAMS)
    monkeypatch.setattr(memory, "machine_memory_bytes", lambda: 16 * 2**30)  # a 16 GiB machine, wherever we run
    start = time.perf_counter()
    rc, lines = run_cli(["summary", "--cfg", str(tmp_path / "layers.cfg"), "--params", str(tmp_path / "params.cfg")],
                        capsys)
    assert time.perf_counter() - start < 1.0
    assert_one_error("summary", rc, lines, (f"layers.cfg:{line_of(layers, 'fc10', 'outputs')}: [fc10]",
                                            "1,154,000,000 parameters", "13.7 GB available"))
    # the same file with a sane layer is within the same limit
    (tmp_path / "layers.cfg").write_text(LAYERS.replace("outputs=10", "outputs=20000"))
    assert run_cli(["summary", "--cfg", str(tmp_path / "layers.cfg")], capsys)[0] == 0


def test_a_huge_cfg_value_is_cut_in_the_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    value = "9x" * 500_000  # a 1 MB value
    (tmp_path / "layers.cfg").write_text(LAYERS.replace("filters=16", f"filters={value}"))
    rc, lines = run_cli(["summary", "--cfg", str(tmp_path / "layers.cfg")], capsys)
    message = assert_one_error("summary", rc, lines, ("[conv1]", "9x9x9x", "...(1000000 chars)"))
    assert len(message) < 300


def test_non_finite_weights_are_refused_by_eval(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(trained[9][1], tmp_path / "run"))
    meta = json.loads((run / "run.json").read_text())
    ema = run / meta["files"]["ema"]
    state = load_file(str(ema))
    state["local4.weight"] = torch.full_like(state["local4.weight"], float("nan"))
    save_file(state, str(ema))
    meta["sha256"]["ema"] = sha256_file(ema)  # a consistent run whose averaged weights went NaN
    (run / "run.json").write_text(json.dumps(meta))
    rc, lines = run_cli(["eval", str(run)], capsys)
    assert_one_error("eval", rc, lines, (f"{ema.name}: tensor 'local4.weight' holds NaN or Inf",))
    assert main(["eval", str(run), "--weights", "raw", "--json"]) == 0  # the raw weights are fine
    with pytest.raises(localconv.LocalconvError, match="NaN or Inf"):
        localconv.load_run(run)


def test_models_command_takes_a_pattern(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "cc_1?pct", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["cc-11pct", "cc-13pct", "cc-18pct"]
    rc, lines = run_cli(["models", "resnet*"], capsys)
    assert_one_error("models", rc, lines, ("no model matches 'resnet*'", "cc-11pct"))


def test_resume_with_the_runs_own_model_name_on_fewer_classes(trained: dict, tmp_path: Path) -> None:
    data, original = trained[3]
    run = Path(shutil.copytree(original, tmp_path / "run"))
    step = json.loads((run / "run.json").read_text())["step"]
    assert main(["train", "--resume", "--out", str(run), "--model", "cc_80sec", "--epochs", "2",
                 "--cache-dir", str(data.parent / "cache"), "--no-progress"]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["step"] == 2 * step and meta["model"]["kwargs"] == {"num_classes": 3}
