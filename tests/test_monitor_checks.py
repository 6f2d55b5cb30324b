"""The layer monitor, the checks, the NaN locator and the training watch, on synthetic data (CPU, fast)."""
import math

import pytest
import torch

import localconv
from localconv.data.loader import select_splits
from localconv.diagnostics.checks import Finding, check_loss, run_checks
from localconv.cli.doctor_recipe import run_doctor
from localconv.diagnostics.options import DoctorOptions
from localconv.diagnostics.monitor import LayerMonitor, MonitorHistory
from localconv.diagnostics.watch import WatchCallback
from localconv.training.engine import Trainer, TrainOptions
from localconv.layer_hooks import weight_layers
from localconv.training.layer_hooks import first_nonfinite_layer

from conftest import synthetic_cifar

SYN = synthetic_cifar(n_train=640, n_test=8, seed=1)  # 608 trained on: enough to judge (>= 500)


def tf_conv_model(**changes):
    """tf-tutorial-conv (the cheapest TF model) with some of its tensors re-initialized."""
    torch.manual_seed(0)
    model = localconv.create_model("tf-tutorial-conv")
    with torch.no_grad():
        for name, value in changes.items():
            tensor = model.get_parameter(name)
            if isinstance(value, str):  # "std=..." re-draws the weights
                tensor.normal_(0.0, float(value.split("=")[1]))
            else:
                tensor.fill_(value)
    return model


def doctor(model, steps=20, batch_size=16, **kw):
    tx, ty, _, _ = SYN
    options = DoctorOptions(steps=steps, batch_size=batch_size, val_images=32, device="cpu", every=2, **kw)
    return run_doctor(model, tx, ty, options)


def kinds(report):
    return {(f.kind, f.layer) for f in report.findings}


# ----------------------------------------------------------------------------------------- monitor
def test_monitor_records_every_weight_layer_in_forward_order_with_its_relu(tmp_path):
    tx, ty, sx, sy = SYN
    splits = select_splits(tx, ty, sx, sy, limit_train=128)
    torch.manual_seed(0)
    model = localconv.create_model("tf-tutorial-conv")
    monitor = LayerMonitor(every=2, dense_start=3)
    options = TrainOptions(device="cpu", progress=False, epochs=8 / 4, batch_size=32, eval_every=0)
    Trainer(model, splits, tmp_path, options, callbacks=[monitor]).fit()
    h = monitor.history
    assert h.layers == ["conv1", "conv2", "local3", "local4", "softmax_linear"]
    assert h.monitored_steps == [0, 1, 2, 4, 6]
    assert [s for s, _ in h.losses] == list(range(8))
    # the shared self.relu is attributed to each layer it follows; the logits have none
    assert h.rectified == {"conv1": True, "conv2": True, "local3": True, "local4": True, "softmax_linear": False}
    assert h.fan_in == {"conv1": 75, "conv2": 1600, "local3": 576, "local4": 576, "softmax_linear": 1152}
    first = {name: h.stats[name][0] for name in h.layers}
    assert first["conv1"].grad_in is None  # the images need no gradient
    for name in h.layers[1:]:
        s = first[name]
        assert 0.05 < s.forward_gain < 5 and 0.05 < s.backward_gain < 5, (name, s)
        assert 0 < s.update_ratio < 1
    assert first["conv1"].dead_frac is not None and first["softmax_linear"].dead_frac is None
    assert h.outputs and h.outputs[0].step == 0 and abs(h.outputs[0].loss - math.log(10)) < 0.3
    # hooks are gone after training
    assert all(not m._forward_hooks for m in weight_layers(model).values())


def test_monitor_sees_the_neuron_inside_cuda_convnet_layers():
    cfg = """
[data]
type=data
dataIdx=0
[labels]
type=data
dataIdx=1
[conv1]
type=conv
inputs=data
channels=3
filters=8
filterSize=5
padding=2
initW=0.0001
neuron=relu
[pool1]
type=pool
inputs=conv1
pool=max
sizeX=3
stride=2
channels=8
[fc10]
type=fc
inputs=pool1
outputs=10
initW=0.01
[probs]
type=softmax
inputs=fc10
[logprob]
type=cost.logreg
inputs=labels,probs
"""
    params = "[conv1]\nepsW=0.001\nepsB=0.002\nmomW=0.9\nmomB=0.9\nwc=0\n[fc10]\nepsW=0.001\nepsB=0.002\nmomW=0.9\n" \
             "momB=0.9\nwc=0\n[logprob]\ncoeff=1\n"
    from localconv.configs import build_cfg_model

    torch.manual_seed(0)
    model = build_cfg_model(cfg, params, crop=24)
    report = doctor(model, steps=24)
    h = report.history
    assert h.layers == ["conv1", "fc10"] and h.rectified == {"conv1": True, "fc10": False}
    conv1 = h.stats["conv1"][0]
    # raw pixels minus the mean (RMS ~60) through initW 1e-4: a tiny gain by design, not a finding
    assert conv1.in_rms > 20 and conv1.forward_gain < 0.01
    assert not any(f.layer == "conv1" for f in report.problems), report.format()


def test_first_nonfinite_layer_names_the_layer_in_forward_order():
    model = tf_conv_model()
    x = torch.randn(4, 3, 24, 24)
    assert first_nonfinite_layer(model, x) is None
    with torch.no_grad():
        model.local3.weight.fill_(1e38)  # finite weights whose (positive-input) outputs overflow
    assert first_nonfinite_layer(model, x) == "local3"
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    assert first_nonfinite_layer(model) == "conv2"  # weights alone, without running the model
    assert first_nonfinite_layer(model, x) == "conv2"
    assert all(not m._forward_hooks for m in weight_layers(model).values())


# ------------------------------------------------------------------------------ checks on runs
def test_healthy_model_has_no_findings():
    report = doctor(tf_conv_model(), steps=60, batch_size=32)  # long enough to judge the loss too
    assert report.healthy and report.exit_code == 0, report.format()
    assert "verdict: healthy" in report.format()


def test_tiny_conv2_init_is_named():
    report = doctor(tf_conv_model(**{"conv2.weight": "std=1e-4"}))
    assert report.exit_code == 1
    assert {("init_too_small", "conv2"), ("vanishing_gradients", "conv2")} <= kinds(report), report.format()
    assert {f.layer for f in report.problems} == {"conv2"}, report.format()


def test_zero_initialized_layer_is_named():
    report = doctor(tf_conv_model(**{"local3.weight": 0.0}))
    assert ("zero_init", "local3") in kinds(report), report.format()
    assert {f.layer for f in report.problems} == {"local3"}, report.format()
    zero = next(f for f in report.findings if f.kind == "zero_init")
    assert zero.severity == "error" and "local3" in zero.fix


def test_dead_relu_layer_is_named():
    report = doctor(tf_conv_model(**{"local4.bias": -10.0}))
    dead = [f for f in report.problems if f.kind == "dead_layer"]
    assert [f.layer for f in dead] == ["local4"], report.format()
    # what follows from the dead layer is folded into it, not reported as separate causes
    assert not any(f.kind in ("constant_outputs", "init_too_small", "not_learning") for f in report.findings)


def test_huge_learning_rate_is_named_as_such():
    report = doctor(tf_conv_model(), lr=300.0)
    assert report.exit_code == 1
    big = next(f for f in report.problems if f.kind == "update_too_large")
    assert big.severity == "error" and big.layer is None and "learning rate is far too high" in big.message
    assert "lower the learning rate" in big.fix
    # the damage that follows (dead layers, exploding gradients...) is folded into it
    assert not any(f.kind in ("dead_layer", "exploding_gradients", "not_learning") for f in report.findings), \
        report.format()


def test_nan_names_step_and_first_layer():
    report = doctor(tf_conv_model(), lr=1e7)
    assert report.stopped.startswith("the loss became nan at step")
    nan = next(f for f in report.findings if f.kind == "nonfinite")
    assert nan.layer in report.history.layers and f"step {nan.step}" in nan.message
    assert nan.step == report.history.nonfinite.step and report.steps_run == nan.step


def test_saturated_softmax_is_named():
    report = doctor(tf_conv_model(**{"softmax_linear.weight": "std=5"}), lr=1e-4)
    assert {("init_too_large", "softmax_linear"), ("softmax_saturated", "softmax_linear")} <= kinds(report), \
        report.format()


# --------------------------------------------------------------------------- checks, by hand
def history_with_losses(values):
    h = MonitorHistory(layers=[], num_classes=10)
    h.losses = list(enumerate(values))
    return h


@pytest.mark.parametrize("series, expected", [
    ([2.3026] * 60, "loss_not_decreasing"),                                 # stuck at chance
    ([2.30 - 0.01 * i for i in range(60)], None),                           # decreasing
    ([1.5] * 30 + [1.5 + 0.05 * i for i in range(30)], "loss_increasing"),  # diverging
    ([2.3026] * 40, None),                                                  # too short to judge
])
def test_loss_trend(series, expected):
    found = check_loss(history_with_losses(series))
    assert [f.kind for f in found] == ([expected] if expected else [])
    if expected == "loss_not_decreasing":
        assert "chance level" in found[0].message


def test_findings_are_ordered_by_severity_and_serializable():
    report = doctor(tf_conv_model(**{"local3.weight": 0.0}), steps=12)
    severities = [f.severity for f in report.findings]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    d = report.to_dict()
    assert d["exit_code"] == 1 and d["findings"][0]["layer"] == "local3"
    import json

    json.dumps(d, allow_nan=False)  # strict JSON: the undefined gains above a zero layer are null
    assert d["layers"]["local4"]["start"]["forward_gain"] is None


# ----------------------------------------------------------------------------------- --watch
def test_watch_warns_once_with_the_doctors_words_and_can_stop(tmp_path):
    tx, ty, sx, sy = SYN
    splits = select_splits(tx, ty, sx, sy, limit_train=256)
    messages = []
    watch = WatchCallback(every=2, stop_on_problem=False, write=messages.append)
    options = TrainOptions(device="cpu", progress=False, epochs=8 / 8, batch_size=32, eval_every=0)
    Trainer(tf_conv_model(**{"conv2.weight": "std=1e-4"}), splits, tmp_path / "a", options, callbacks=[watch]).fit()
    assert messages and all(m.startswith("watch: ") for m in messages)
    assert len(messages) == len({f.key for f in watch.warned})  # once per problem
    doctor_text = {f.key: f.text() for f in run_checks(watch.monitor.history)}
    init = next(f for f in watch.warned if f.kind == "init_too_small")
    assert init.layer == "conv2" and init.text() == doctor_text[init.key]

    stopper = WatchCallback(every=2, stop_on_problem=True, write=lambda _: None)
    trainer = Trainer(tf_conv_model(**{"conv2.weight": "std=1e-4"}), splits, tmp_path / "b", options,
                      callbacks=[stopper])
    state = trainer.fit()
    assert trainer.stop_reason == "problem: init_too_small in conv2" and state.step == 1


def test_finding_text_names_layer_and_fix():
    f = Finding("x", "conv2", "warning", "something is off.", "do this.")
    assert f.text() == "conv2: something is off. Fix: do this." and f.is_problem
    assert Finding("x", None, "info", "m.", "f.").text().startswith("model: ")
