"""One way to print an accuracy, one meaning per loss name, a moving bar during evaluation."""
import contextlib
import json
import re

import pytest
import torch

import localconv
from localconv.data.loader import select_splits
from localconv.metrics import LOSS_CROSS_ENTROPY, LOSS_TOTAL, auto_interval, format_accuracy, read_loss
from localconv.training import evaluate as evaluate_module
from localconv.training.engine import Trainer, TrainOptions

from conftest import synthetic_cifar

PERCENT = r"\d{1,3}\.\d\d%"


def test_format_accuracy():
    assert format_accuracy(0.8225) == "82.25%"
    assert format_accuracy(1.0) == "100.00%" and format_accuracy(0.0) == "0.00%"
    assert format_accuracy(0.123456) == "12.35%"
    assert format_accuracy(None) == "-" and format_accuracy(float("nan")) == "-"


def test_read_loss_accepts_old_metrics_records():
    new = {"kind": "epoch", LOSS_TOTAL: 2.5, LOSS_CROSS_ENTROPY: 2.3}
    old = {"kind": "epoch", "loss": 2.6}  # before the two names, "loss" was the total
    assert read_loss(new, LOSS_TOTAL) == 2.5 and read_loss(new, LOSS_CROSS_ENTROPY) == 2.3
    assert read_loss(old, LOSS_TOTAL) == 2.6 and read_loss(old, LOSS_CROSS_ENTROPY) is None


def test_auto_interval():
    assert auto_interval(8, cap=50) == 1          # a short run: every step
    assert auto_interval(200, cap=50) == 10       # about 20 points
    assert auto_interval(100_000, cap=50) == 50   # a long run: the cap


def _trainer(tmp_path, recipe="original", model="tf-tutorial-conv", **kw):
    tx, ty, sx, sy = synthetic_cifar(n_train=96, n_test=600)
    splits = select_splits(tx, ty, sx, sy)
    torch.manual_seed(0)
    options = TrainOptions(device="cpu", progress=False, epochs=1, batch_size=32, recipe=recipe, **kw)
    return Trainer(localconv.create_model(model), splits, tmp_path / "run", options)


def test_console_and_metrics_use_the_two_loss_names_and_percent(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    trainer.fit()
    out = capsys.readouterr().out
    assert re.fullmatch(rf"epoch 1\.00: loss/total \d+\.\d{{4}}, loss/cross_entropy \d+\.\d{{4}}, "
                        rf"test accuracy {PERCENT}\n", out), out
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    (epoch,) = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3] and "loss" not in epoch
    # the epoch's value is the mean of its steps (each step record is the mean of the steps since the last)
    for key in (LOSS_TOTAL, LOSS_CROSS_ENTROPY):
        assert epoch[key] == pytest.approx(sum(r[key] for r in steps) / 3, rel=1e-5)
    # tf-tutorial-conv decays local3/local4 and softmax_linear in the loss: the total is larger
    assert epoch[LOSS_TOTAL] > epoch[LOSS_CROSS_ENTROPY] + 0.05


def test_total_includes_update_rule_decay_and_cross_entropy_is_plain(tmp_path):
    # cc-13pct (cuda-convnet: wc in the update rule) with the fast recipe (label smoothing 0.1)
    trainer = _trainer(tmp_path, recipe="fast", model="cc-13pct", log_every=0)
    model = trainer.model
    x = torch.randn(8, 3, 24, 24)
    y = torch.arange(8) % 10
    with torch.no_grad():
        logits = model(x)
    loss, (total, ce) = trainer.loss_terms(logits, y)
    plain = torch.nn.functional.cross_entropy(logits, y)
    smoothed = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert float(ce) == pytest.approx(float(plain), rel=1e-6)  # without smoothing
    assert float(loss) == pytest.approx(float(smoothed), rel=1e-6)  # what is trained: unchanged
    decay = sum(0.5 * g["wc"] * sum(float(p.detach().pow(2).sum()) for p in g["params"])
                for g in trainer.optimizer.param_groups if g["wc"])
    assert decay > 0 and float(total) == pytest.approx(float(smoothed) + decay, rel=1e-5)


def test_evaluation_moves_a_progress_bar(tmp_path, monkeypatch):
    updates = []

    class Bar:
        def update(self, n):
            updates.append(n)

    def fake_bar(total, desc):
        if desc is None:
            return contextlib.nullcontext(None)
        assert desc == "eval test" and total == 600
        return contextlib.nullcontext(Bar())

    monkeypatch.setattr(evaluate_module, "progress_bar", fake_bar)
    trainer = _trainer(tmp_path)
    plain = trainer.evaluate_now()
    assert updates == []  # no bar unless asked
    assert trainer.evaluate_now(progress=True) == plain
    assert sum(updates) == 600 and len(updates) >= 2  # it moves during the evaluation, not only at its end


def test_step_records_average_the_steps_since_the_previous_one():
    from localconv.training.loss_meter import LossMeter

    meter = LossMeter(torch.device("cpu"))
    for terms in ([4.0, 2.0], [6.0, 3.0]):
        meter.add(torch.tensor(terms))
    assert meter.interval_means() == {LOSS_TOTAL: 5.0, LOSS_CROSS_ENTROPY: 2.5}
    assert meter.interval_means() == {}  # nothing new since
    meter.add(torch.tensor([2.0, 1.0]))
    assert meter.interval_means() == {LOSS_TOTAL: 2.0, LOSS_CROSS_ENTROPY: 1.0}
    assert meter.epoch_means() == [4.0, 2.0]
    meter.start_epoch()
    meter.copy_from(torch.tensor([3.0, 1.5]), 1)  # the fused step's own device sums
    assert meter.interval_means() == {LOSS_TOTAL: 3.0, LOSS_CROSS_ENTROPY: 1.5}
