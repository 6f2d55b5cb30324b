"""Expected calibration error, temperature fitting (hand-computed cases) and `eval --calibrate`."""
import json
import math

import pytest
import torch
from PIL import Image

import localconv
from cifar_fixtures import CLASSES, Arrays, write_image_tree
from conftest import synthetic_cifar
from localconv.cli.main import main
from localconv.errors import LocalconvError
from localconv.reports.calibration import calibration_bins, expected_calibration_error, fit_temperature


def test_ece_by_hand():
    probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.85, 0.15], [0.25, 0.75]])
    labels = torch.tensor([0, 1, 0, 1])
    # confidences 0.95 (right), 0.65 (wrong), 0.85 (right), 0.75 (right), each alone in a 0.1-wide bin
    expected = (abs(1 - 0.95) + abs(0 - 0.65) + abs(1 - 0.85) + abs(1 - 0.75)) / 4
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)
    # one bin: |mean accuracy - mean confidence| = |3/4 - 0.8|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.05)
    bins = calibration_bins(probs, labels, n_bins=10)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert bins[6]["accuracy"] == 0.0 and bins[6]["confidence"] == pytest.approx(0.65)
    assert math.isnan(expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_ece_of_a_perfectly_calibrated_predictor_is_small():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=gen) * 2
    probs = logits.softmax(1)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # labels drawn from the predictions
    assert expected_calibration_error(probs, labels) < 0.02
    overconfident = (logits * 3).softmax(1)
    assert expected_calibration_error(overconfident, labels) > 0.15


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_temperature_that_generated_the_labels(true_t):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(20000, 10, generator=gen) * 3
    labels = torch.multinomial((logits / true_t).softmax(1), 1, generator=gen).squeeze(1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    # the fitted T is a stationary point of the NLL
    nll = lambda tt: torch.nn.functional.cross_entropy(logits.double() / tt, labels).item()  # noqa: E731
    h = 1e-4 * t
    assert abs(nll(t + h) - nll(t - h)) / (2 * h) < 1e-3
    assert nll(t) <= min(nll(t * 1.1), nll(t / 1.1))


def test_fit_temperature_two_point_case():
    # logits (a, 0) with the first class right in a fraction q of the cases: the NLL optimum has
    # sigmoid(a / T) = q, i.e. T = a / logit(q)
    a, q = 4.0, 0.8
    logits = torch.tensor([[a, 0.0]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert fit_temperature(logits, labels) == pytest.approx(a / math.log(q / (1 - q)), rel=1e-4)


def test_fit_temperature_rejects_empty_input():
    with pytest.raises(LocalconvError):
        fit_temperature(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))


@pytest.fixture(scope="module")
def data_tree(tmp_path_factory):
    tx, ty, sx, sy = synthetic_cifar(n_train=200, n_test=60, seed=3)
    root = tmp_path_factory.mktemp("calib")
    return write_image_tree(root / "data", Arrays(tx, ty, sx, sy, CLASSES)), root


def train(data, root, name, *extra):
    run = root / name
    assert main(["train", "--model", "tf-tutorial-conv", "--data", str(data), "--cache-dir", str(root / "cache"),
                 "--out", str(run), "--epochs", "1", "--batch-size", "25", "--device", "cpu", "--no-progress",
                 *extra]) == 0
    return run


def test_eval_calibrate_stores_a_temperature_used_by_predict(data_tree, tmp_path, capsys):
    data, root = data_tree
    run = train(data, root, "with-val", "--val-split", "50")
    capsys.readouterr()
    diagram = tmp_path / "reliability.png"
    assert main(["eval", str(run), "--calibrate", "--reliability", str(diagram), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    t = out["calibration"]["temperature"]
    assert t > 0 and out["temperature"] == pytest.approx(t) and out["calibration"]["n_val"] == 50
    assert 0 <= out["ece"] <= 1 and 0 <= out["calibration"]["ece_before"] <= 1
    assert json.loads((run / "run.json").read_text())["temperature"] == pytest.approx(t)
    with Image.open(diagram) as image:
        assert image.format == "PNG"
    # the stored temperature reaches predict_proba
    model, _ = localconv.load_run(run)
    assert float(model.temperature) == pytest.approx(t)
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        expected = torch.softmax(model(x) / t, dim=1)
    assert torch.allclose(model.predict_proba(x), expected, atol=1e-6)
    # a later eval reports the calibrated ECE with its temperature (and draws a confusion matrix)
    assert main(["eval", str(run), "--confusion", str(tmp_path / "cm.png")]) == 0
    assert f"temperature {t:.3f}" in capsys.readouterr().out
    with Image.open(tmp_path / "cm.png") as image:
        assert image.format == "PNG" and min(image.size) >= 400


def test_calibrate_needs_a_validation_split(data_tree, capsys):
    data, root = data_tree
    run = train(data, root, "no-val")
    capsys.readouterr()
    assert main(["eval", str(run), "--calibrate"]) == 2
    err = capsys.readouterr().err
    assert "--val-split" in err and len(err.strip().splitlines()) == 1
    assert "temperature" not in json.loads((run / "run.json").read_text())


def test_bad_reliability_path_and_bad_stored_temperature(data_tree, tmp_path, capsys):
    data, root = data_tree
    run = root / "with-val"
    if not run.exists():
        run = train(data, root, "with-val", "--val-split", "50")
    assert main(["eval", str(run), "--reliability", str(tmp_path / "x.jpg")]) == 2
    meta = json.loads((run / "run.json").read_text())
    meta["temperature"] = "hot"
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(run, bad)
    (bad / "run.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["eval", str(bad)]) == 2
    assert "temperature" in capsys.readouterr().err
