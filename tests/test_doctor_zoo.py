"""The doctor on any PyTorch model (issue 22): `localconv.diagnose`, `localconv.Watch` and
`localconv doctor --module`, on a zoo of small models with planted bugs and healthy ones (tests/doctor_zoo.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import localconv
from doctor_zoo import BUGS, HEALTHY, cnn, detected, run_case, zoo_data
from localconv.cli.main import main


# ------------------------------------------------------------------------------------------ the zoo
@pytest.mark.parametrize("case", BUGS, ids=[c.name for c in BUGS])
def test_each_planted_bug_is_named_at_its_layer(case):
    report = run_case(case)
    assert detected(case, report), str(report)
    kind, layer = case.expected
    finding = next(f for f in report.problems if (f.kind, f.layer) == case.expected)
    assert finding.message and finding.fix and finding.severity in ("error", "warning")
    if layer is not None:  # a layer of the model, by its named_modules() name, and the fix names it
        assert layer in dict(report_model_modules(case)), layer
    assert not report.healthy and report.exit_code == 1


def report_model_modules(case):
    torch.manual_seed(0)
    model, _, _ = case.build()
    return model.named_modules()


@pytest.mark.parametrize("case", HEALTHY, ids=[c.name for c in HEALTHY])
def test_healthy_models_raise_no_alarm(case):
    report = run_case(case)
    assert report.ok and report.healthy, str(report)
    assert "verdict: healthy" in str(report)


# ----------------------------------------------------------------------------------- the report
def test_report_prints_table_findings_and_serializes():
    report = run_case(BUGS[2])  # conv 3 initialized to zero
    text = str(report)
    assert text.splitlines()[1] == f"trained on {report.trained_on} images, held out {report.held_out}"
    assert report.trained_on == 512 and report.held_out == 128
    assert "gain fwd" in text and "(each cell: first -> last monitored step" in text  # the columns explained
    assert "[error] 3: 3's weights are all zero" in text and "fix: initialize 3's weights randomly" in text
    assert not report.ok
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["ok"] is False and d["exit_code"] == 1
    assert {"kind", "layer", "severity", "message", "fix"} <= set(d["findings"][0])
    assert d["findings"][0]["layer"] == "3" and d["findings"][0]["severity"] == "error"


def test_diagnose_takes_a_dataloader_and_states_its_defaults():
    x, y = zoo_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    report = localconv.diagnose(cnn(), loader, steps=60)
    assert report.steps_run == 60 and report.trained_on == 640 and report.held_out == 0
    assert report.trained_with == "SGD(lr=0.01, momentum=0.9)"
    assert report.history.unseen is not None  # accuracy of the first pass's batches, before their steps
    assert "trained on 640 images, held out none (accuracy measured on each batch before training on it)" \
        in str(report)


def test_diagnose_refuses_data_it_cannot_use():
    with pytest.raises(TypeError, match="DataLoader"):
        localconv.diagnose(cnn(), 42, steps=1)
    with pytest.raises(ValueError, match="no batches"):
        localconv.diagnose(cnn(), [], steps=1)


def test_too_little_data_is_never_called_healthy():
    x, y = zoo_data(n=200)
    torch.manual_seed(0)
    report = localconv.diagnose(cnn(), (x, y), steps=30)
    assert report.trained_on == 160 and report.held_out == 40
    assert ("too_little_data", None) in {(f.kind, f.layer) for f in report.problems}
    assert not report.healthy and "verdict: could not judge" in str(report)


# ---------------------------------------------------------------------------------------- Watch
def _train(watch: bool, steps: int = 12):
    torch.manual_seed(0)
    model = cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = zoo_data(n=96)
    losses = []
    context = localconv.Watch(model, every=2) if watch else None
    if context is not None:
        context.__enter__()
    for step in range(steps):
        i = (step * 32) % 96
        loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        optimizer.zero_grad()
        loss.backward()
        if context is not None:
            context.after_backward(loss, y[i:i + 32])
        optimizer.step()
        if context is not None:
            context.after_step()
        losses.append(loss.item())
    if context is not None:
        during = context.report()
        context.__exit__(None, None, None)
        return model, losses, context, during
    return model, losses, None, None


def test_watch_does_not_change_training_and_reports():
    plain, plain_losses, _, _ = _train(watch=False)
    watched, watched_losses, watch, during = _train(watch=True)
    assert watched_losses == plain_losses
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    assert during.steps_run == 12 and during.history.layers == ["0", "3", "7", "9"]
    # hooks removed on exit; the report still works after the block
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in watched.modules())
    after = watch.report()
    assert after.steps_run == 12 and isinstance(str(after), str)


def test_watch_names_a_bug_in_the_users_loop():
    torch.manual_seed(0)
    model = nn.Sequential(*cnn(), nn.Softmax(dim=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = zoo_data(n=64)
    with localconv.Watch(model, every=5) as w:
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            w.after_backward(loss)
            optimizer.step()
            w.after_step()
    assert ("softmax_before_loss", "10") in {(f.kind, f.layer) for f in w.report().findings}


# --------------------------------------------------------------------------------- --module CLI
MODEL_FILE = '''
import torch
from torch import nn

def make(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, num_classes))

def make_zero(num_classes):
    model = make(num_classes)
    nn.init.zeros_(model[4].weight)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

def make_int(num_classes):
    return 3

def make_raises(num_classes):
    raise RuntimeError("no GPU here")

def make_exits(num_classes):
    import sys
    sys.exit(0)
'''


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    from cifar_fixtures import CLASSES, Arrays, write_image_tree
    from conftest import synthetic_cifar

    root = tmp_path_factory.mktemp("module-data")
    return write_image_tree(root / "data", Arrays(*synthetic_cifar(n_train=700, n_test=60, seed=1), CLASSES))


def _doctor_module(capsys, spec, data, cache, *extra):
    capsys.readouterr()
    code = main(["doctor", "--module", spec, "--data", str(data), "--cache-dir", str(cache), "--device", "cpu",
                 "--steps", "60", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_doctor_module_file_healthy_and_broken(image_tree, tmp_path, capsys):
    model_file = tmp_path / "mymodel.py"
    model_file.write_text(MODEL_FILE)
    code, out, err = _doctor_module(capsys, f"{model_file}:make", image_tree, tmp_path / "cache")
    assert code == 0, out + err
    assert "trained on 560 images, held out 140" in out and "verdict: healthy" in out
    code, out, err = _doctor_module(capsys, f"{model_file}:make_zero", image_tree, tmp_path / "cache", "--json")
    report = json.loads(out)
    assert code == 1 and report["exit_code"] == 1
    assert ("zero_init", "4") in {(f["kind"], f["layer"]) for f in report["findings"]}


def test_doctor_module_package_form(image_tree, tmp_path, capsys, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(MODEL_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = _doctor_module(capsys, "mypkg.nets:make_zero", image_tree, tmp_path / "cache",
                                    "--steps", "5", "--json")
    assert code == 1, err
    assert json.loads(out)["model"] == "mypkg.nets:make_zero"


@pytest.mark.parametrize("spec, words", [
    ("{dir}/missing.py:make", "missing.py: no such file"),
    ("{dir}/broken.py:make", "broken.py: failed to import: SyntaxError"),
    ("{dir}/mymodel.py:nothing", "mymodel.py: has no function 'nothing'"),
    ("{dir}/mymodel.py:make_raises", "mymodel.py: make_raises(10) raised RuntimeError: no GPU here"),
    ("{dir}/mymodel.py:make_int", "mymodel.py: make_int(10) returned int"),
    ("no_such_package_xyz.nets:make", "no_such_package_xyz.nets: failed to import: ModuleNotFoundError"),
    ("{dir}/mymodel.py", "expected FILE.py:FACTORY"),
    ("{dir}/exits.py:make", "exits.py: failed to import: SystemExit"),  # not exit code 0 ("healthy")
    ("{dir}/mymodel.py:make_exits", "make_exits(10) raised SystemExit"),
    ("{dir}:make", "is a folder"),
])
def test_doctor_module_errors_are_one_line_naming_the_file(spec, words, image_tree, tmp_path, capsys):
    (tmp_path / "mymodel.py").write_text(MODEL_FILE)
    (tmp_path / "broken.py").write_text("def make(:\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    code, out, err = _doctor_module(capsys, spec.format(dir=tmp_path), image_tree, tmp_path / "cache")
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_doctor_module_refuses_a_second_model(capsys):
    code = main(["doctor", "--module", "x.py:make", "--model", "tf-tutorial"])
    assert code == 2 and "one of --model, --cfg or --module" in capsys.readouterr().err


def test_default_steps_and_nonfinite_stop():
    x, y = zoo_data(n=160)
    torch.manual_seed(0)
    model = cnn()
    report = localconv.diagnose(model, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=1e6), steps=50)
    assert report.stopped.startswith("the loss became") and not report.ok
    assert report.steps is not None and report.steps_run < 50
    assert math.isnan(report.history.losses[-1][1]) or math.isinf(report.history.losses[-1][1])


def test_the_2016_network_gets_both_causes_named():
    """The blog's network (conv1 and conv2 at std 1e-4, a softmax inside the model): the built-in doctor,
    diagnose() with the recipe, names conv2's init and the softmax before the loss."""
    from conftest import synthetic_cifar
    from localconv.cli.doctor_recipe import run_doctor
    from localconv.diagnostics.options import DoctorOptions

    images, labels, *_ = synthetic_cifar(n_train=640, n_test=8, seed=3)
    torch.manual_seed(0)
    model = localconv.create_model("tf-tutorial-2016")
    report = run_doctor(model, images, labels, DoctorOptions(steps=12, batch_size=16, val_images=32, every=2,
                                                             device="cpu"))
    named = {(f.kind, f.layer) for f in report.problems}
    assert {("softmax_before_loss", "softmax_linear"), ("init_too_small", "conv2")} <= named, str(report)
    assert not report.ok


# ------------------------------------------------------------- models the zoo lacks: no false alarms
def _frozen_first_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model[1].requires_grad_(False)  # frozen on purpose: not "left out of the optimizer", not "not learning"
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    return model, zoo_data(), {"optimizer": optimizer}


def _regression_one_output():
    x, _ = zoo_data()
    x = x.flatten(1)[:, :8]
    target = x @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))  # float targets, one output
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), (x, target), {"loss_fn": F.mse_loss}


class _TextClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, tokens):
        return self.fc(self.embedding(tokens).mean(dim=1))


def _text_classifier():
    tokens = torch.randint(0, 50, (640, 12), generator=torch.Generator().manual_seed(0))  # integer token ids
    return _TextClassifier(), (tokens, tokens[:, 0] % 10), {}


def _linear_probe():
    """A trained CNN, frozen but its classifier (whose .grad are stale ones from that training), re-trained."""
    model, data = cnn(), zoo_data()
    localconv.diagnose(model, data, steps=30)
    for layer in (model[0], model[3], model[7]):
        layer.requires_grad_(False)
    model[9].reset_parameters()
    return model, data, {"optimizer": torch.optim.SGD(model[9].parameters(), lr=0.01, momentum=0.9)}


@pytest.mark.parametrize("build", [_frozen_first_layer, _regression_one_output, _text_classifier, _linear_probe],
                         ids=["frozen-layer", "regression-mse", "embedding-text", "linear-probe"])
def test_no_false_alarm_on_models_the_zoo_lacks(build):
    torch.manual_seed(0)
    model, data, kwargs = build()
    report = localconv.diagnose(model, data, steps=150, **kwargs)
    assert report.healthy, str(report)


def test_an_already_trained_model_is_not_called_stuck():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 10))
    localconv.diagnose(model, zoo_data(), steps=300)
    report = localconv.diagnose(model, zoo_data(), steps=150)  # its loss holds far below chance
    assert report.healthy, str(report)
    assert "already_trained" in {f.kind for f in report.findings}


def test_diagnose_says_what_is_wrong_with_its_input():
    x, y = zoo_data(n=96)
    batches = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32))  # a generator: one pass only
    with pytest.raises(ValueError, match="cannot be iterated again"):
        localconv.diagnose(cnn(), batches, steps=10)
    with pytest.raises(ValueError, match="must return a scalar"):
        localconv.diagnose(cnn(), (x, y), steps=2, loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"))
    with pytest.raises(TypeError, match="pair of tensors"):  # several inputs
        localconv.diagnose(cnn(), [((x, x), y)], steps=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            localconv.diagnose(cnn(), (x, y), steps=2, device="cuda")


def test_watch_without_after_step_is_an_error_not_a_silent_report():
    model = cnn()
    x, y = zoo_data(n=32)
    with localconv.Watch(model) as w, pytest.raises(RuntimeError, match="after_step"):
        for _ in range(2):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            w.after_backward(loss)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_watch_changes_nothing_with_adam_batchnorm_and_dropout():
    def train(watch: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                              nn.Linear(32, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = zoo_data(n=64)
        w = localconv.Watch(model, every=2).__enter__() if watch else None
        losses = []
        for _ in range(8):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            if w:
                w.after_backward(loss, y)
            optimizer.step()
            if w:
                w.after_step()
            losses.append(loss.item())
        if w:
            w.__exit__(None, None, None)
        return losses, model.state_dict(), torch.rand(3)  # the dropout RNG's state after training, too

    (a, sa, ra), (b, sb, rb) = train(False), train(True)
    assert a == b and torch.equal(ra, rb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


class _DetachedBelow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(192, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.relu(self.hidden(x.flatten(1))).detach())  # a bug: no gradient reaches hidden


def test_a_layer_cut_off_by_detach_is_not_taken_for_a_frozen_one():
    torch.manual_seed(0)
    report = localconv.diagnose(_DetachedBelow(), zoo_data(), steps=60)
    assert ("not_learning", "hidden") in {(f.kind, f.layer) for f in report.problems}, str(report)
