"""Issue 24: a run keeps its best checkpoint as well as its last (by the evaluation split's accuracy;
`eval RUN --weights best`), can stop early, logs its training accuracy, and `eval` reports top-5 accuracy
when there are more than 5 classes."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import localconv
from cifar_fixtures import make_arrays
from localconv.cli.main import main
from run_fixtures import private_cache, image_tree, train_run  # noqa: F401 (private_cache: autouse)


def records(run, kind="epoch"):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_best_weights_are_kept_and_evaluate_as_logged(tmp_path, capsys):
    data = image_tree(tmp_path / "data", n_train=60, n_test=30, seed=2)
    run = train_run(data, tmp_path / "run", "--lr-scale", "3", epochs="4")
    meta = json.loads((run / "run.json").read_text())
    epochs = records(run)
    accuracies = [r["accuracy"] for r in epochs]
    best_epoch = epochs[accuracies.index(max(accuracies))]  # the first of equal bests
    assert meta["best_step"] == best_epoch["step"] and meta["best_accuracy"] == max(accuracies)
    best_file = run / meta["files"]["best"]
    assert best_file.name == f"best-{meta['best_step']:09d}.safetensors"
    assert [p.name for p in run.glob("best-*")] == [best_file.name]  # earlier bests are removed
    assert meta["sha256"]["best"] == hashlib.sha256(best_file.read_bytes()).hexdigest()
    best = eval_json(capsys, run, "--weights", "best")
    assert best["accuracy"] == pytest.approx(meta["best_accuracy"], abs=1e-12) and best["step"] == meta["best_step"]
    assert eval_json(capsys, run)["accuracy"] == pytest.approx(meta["last_accuracy"], abs=1e-12)
    assert all(0 <= r["train_accuracy"] <= 1 for r in epochs)  # training accuracy in metrics.jsonl
    # top-5 (10 classes): checked against the probabilities of the best weights on the test images
    model, _ = localconv.load_run(run, which="best")
    test = make_arrays(60, 30, seed=2)
    probs = model.predict_proba(torch.from_numpy(test.test_images))
    top5 = (probs.topk(5, 1).indices == torch.from_numpy(test.test_labels)[:, None]).any(1).double().mean()
    assert best["top5_accuracy"] == pytest.approx(float(top5), abs=1e-12) and best["top5_accuracy"] >= best["accuracy"]


def test_early_stop_and_resume_keep_the_best_checkpoint(tmp_path, capsys):
    data = image_tree(tmp_path / "data5", classes=list("abcde"))
    # a learning rate of ~0: the accuracy never improves after the first evaluation
    args = ["--lr-scale", "1e-30", "--early-stop", "2"]
    run = train_run(data, tmp_path / "run", *args, epochs="6")
    assert "stopped at step 6: early stop: no better test accuracy in 2 evaluations" in capsys.readouterr().err
    meta = json.loads((run / "run.json").read_text())
    assert meta["step"] == 6 and meta["best_step"] == 2 and meta["complete"] and meta["evals_since_best"] == 2
    assert meta["options"]["early_stop"] == 2 and len(records(run)) == 3
    sha = meta["sha256"]["best"]
    assert "top5_accuracy" not in eval_json(capsys, run, "--weights", "best")  # 5 classes: no top-5
    # resumed, it goes on from its counters: one more evaluation without a better accuracy stops it again
    assert main(["train", "--resume", "--out", str(run), "--epochs", "8", "--no-progress"]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["step"] == 8 and meta["best_step"] == 2 and meta["sha256"]["best"] == sha
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["best-000000002.safetensors",
                                                                  "ema-000000008.safetensors",
                                                                  "model-000000008.safetensors"]
    localconv.load_run(run, which="best")  # its checksum still holds
    capsys.readouterr()
    assert main(["train", "--model", "tf-tutorial-conv", "--data", str(data), "--out", str(tmp_path / "x"),
                 "--early-stop", "2", "--eval-every", "0"]) == 2
    assert "--early-stop" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # a run of an older localconv keeps no best checkpoint: --weights best says so
    meta = json.loads((run / "run.json").read_text())
    del meta["files"]["best"], meta["sha256"]["best"], meta["best_step"]
    (run / "run.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["eval", str(run), "--weights", "best"]) == 2
    assert "keeps no best checkpoint" in capsys.readouterr().err
    assert np.isfinite(eval_json(capsys, run)["accuracy"])

