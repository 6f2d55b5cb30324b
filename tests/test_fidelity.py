"""The original procedures as published (issue 14): cuda-convnet's held-out batch 5 in phase 1, its centre-patch
mean subtraction, float32 original recipes, and the eager step as every device's default."""
import json

import numpy as np
import torch

from cifar_fixtures import Arrays, write_python_release
from conftest import synthetic_cifar
from localconv.cli.main import build_parser, main
from localconv.configs import build_cfg_model
from localconv.data.augment import EpochPlan, eval_batch, train_batch
from localconv.data.loader import select_splits
from localconv.models.base import InputSpec
from localconv.training.engine import Trainer, TrainOptions
from localconv.training.holdout import HOLDOUT_SEED, choose_holdout
from localconv.training.precision import eval_amp, resolve_amp

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

LAYERS = """\
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
stride=2
initW=0.01
neuron=relu

[pool1]
type=pool
inputs=conv1
pool=max
sizeX=3
stride=2

[fc10]
type=fc
inputs=pool1
outputs=10

[probs]
type=softmax
inputs=fc10

[logprob]
type=cost.logreg
inputs=labels,probs
"""

PARAMS = """\
[conv1]
epsW=0.01
epsB=0.02
momW=0.9
momB=0.9
wc=0.0

[fc10]
epsW=0.01
epsB=0.02
momW=0.9
momB=0.9
wc=0.01
"""


# ---------------------------------------------------------------- item 2: the mean is the centre patch
def test_corner_and_mirrored_crops_get_exactly_the_centre_patch_of_the_mean():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean = torch.rand(3, 32, 32) * 255
    spec = InputSpec(crop=24, normalize="pixel_mean", photometric=False)
    centre = mean[:, 4:28, 4:28]
    # image 0: the top-left corner crop; image 1: the bottom-right crop, mirrored
    plan = EpochPlan(torch.arange(2), torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, True]),
                     torch.zeros(2), torch.ones(2))
    got = train_batch(images, plan, spec, mean)
    assert torch.equal(got[0], images[0, :, :24, :24].float() - centre)
    assert torch.equal(got[1], images[1, :, 8:, 8:].float().flip(-1) - centre)
    # the test views too: a mirrored corner view gets the same, unflipped centre patch
    assert torch.equal(eval_batch(images, spec, mean, "tr", flip=True),
                       images[:, :, :24, 8:].float().flip(-1) - centre)


# ---------------------------------------------------------------- item 3: float32 original recipes
def test_amp_resolution_keeps_original_recipes_in_float32():
    assert resolve_amp(None, "original", "cuda") is False
    assert resolve_amp(None, "fast", "cuda") is True
    assert resolve_amp(None, "fast", "cpu") is False  # a CPU without native bf16: emulated bf16 is slower
    assert resolve_amp(None, "fast", "cpu", native_bf16=True) is True  # AMX / AVX512-BF16
    assert resolve_amp(None, "original", "cpu", native_bf16=True) is False
    assert resolve_amp(True, "original", "cuda") is True  # an explicit --amp is honoured (and recorded)
    assert resolve_amp(False, "fast", "cuda") is False
    # eval: --amp/--no-amp wins; else the run's own training setting where bf16 is native, float32 elsewhere
    assert eval_amp(None, {"amp": True}, "cpu") is False
    assert eval_amp(None, {"amp": True}, "cpu", native_bf16=True) is True
    assert eval_amp(None, {"amp": False}, "cpu", native_bf16=True) is False
    assert eval_amp(None, {"options": {"recipe": "fast", "amp": None}}, "cpu", native_bf16=True) is False  # older
    assert eval_amp(None, {"amp": True}, "cuda") is True
    assert eval_amp(None, {"amp": False, "options": {"recipe": "fast"}}, "cuda") is False
    assert eval_amp(None, {"options": {"recipe": "original", "amp": None}}, "cuda") is False  # older run.json
    assert eval_amp(None, {"options": {"recipe": "fast", "amp": None}}, "cuda") is True
    assert eval_amp(True, {"amp": False}, "cpu") is True and eval_amp(False, {"amp": True}, "cuda") is False
    args = build_parser().parse_args(["eval", "run", "--no-amp"])
    assert args.amp is False and build_parser().parse_args(["eval", "run"]).amp is None


def test_trainer_records_the_resolved_precision(tmp_path):
    tx, ty, sx, sy = synthetic_cifar(n_train=40, n_test=10)
    for amp, expected in ((None, False), (True, True)):
        t = Trainer(tiny_model(), select_splits(tx, ty, sx, sy), tmp_path / str(amp),
                    TrainOptions(device="cpu", progress=False, amp=amp, batch_size=10), data_info={"args": {}})
        assert t.amp is expected and t.metadata(False)["amp"] is expected and t.options.amp is amp


# ---------------------------------------------------------------- item 8: eager by default on CUDA too
def test_step_auto_is_eager_on_cuda_too():
    t = Trainer.__new__(Trainer)  # the resolution only reads these; no CUDA device is needed
    t.options, t.dist, t.callbacks, t.device = TrainOptions(step="auto"), None, [], torch.device("cuda")
    assert t._resolve_step_mode() == "eager"
    t.options = TrainOptions(step="fused")
    assert t._resolve_step_mode() == "fused"


# ---------------------------------------------------------------- item 1: cuda-convnet's methodology
def tiny_model():
    torch.manual_seed(0)
    return build_cfg_model(LAYERS, PARAMS, crop=24)


def test_holdout_is_batch_5_of_a_whole_release_else_a_seeded_fifth_of_each_class():
    labels = torch.arange(100) % 10
    release = {"source": "CIFAR-10 python release (folder x)", "args": {}}
    h = choose_holdout(labels, 10, release)
    assert h.kind == "batch 5" and torch.equal(h.held, torch.arange(80, 100)) and h.per_class == [2] * 10
    assert torch.equal(h.kept, torch.arange(80))
    # a subset of the release, or an image tree: a fifth of each class, the same whatever the training seed
    tree = {"source": "image folder tree (x)", "args": {}}
    labels = torch.tensor([c for c in range(10) for _ in range(7 + c)])  # 7..16 images per class
    a, b = choose_holdout(labels, 10, tree), choose_holdout(labels, 10, {**release, "args": {"limit_train": 115}})
    assert a.kind == b.kind == "seeded stand-in" and torch.equal(a.held, b.held)
    assert a.per_class == [(7 + c) // 5 for c in range(10)]
    assert torch.equal(torch.sort(torch.cat([a.held, a.kept])).values, torch.arange(labels.numel()))
    assert a.record()["holdout_seed"] == HOLDOUT_SEED and a.record()["holdout_images"] == sum(a.per_class)


def make_methodology_trainer(run_dir, resume=False, callbacks=(), **opts):
    tx, ty, sx, sy = synthetic_cifar(n_train=100, n_test=20, seed=3)
    splits = select_splits(tx, ty, sx, sy)
    options = TrainOptions(device="cpu", progress=False, batch_size=10, epochs=3, schedule="2:1,1:0.1",
                           holdout="auto", **opts)
    return Trainer(tiny_model(), splits, run_dir, options, data_info={"source": "image folder tree", "args": {}},
                   resume=resume, callbacks=callbacks)


def test_phase_1_trains_without_the_holdout_and_validates_on_it(tmp_path):
    t = make_methodology_trainer(tmp_path / "run")
    held = set(t.holdout.held.tolist())
    n_held = len(held)
    assert 0 < n_held < 100 and t.methodology["phase1_epochs"] == 2
    phase1_steps = (100 - n_held) // 10
    assert t.total_steps == 2 * phase1_steps + 10
    plan, first, steps, phase1 = t.epoch_plan(phase1_steps, 0)  # epoch 2 of phase 1
    assert phase1 and first == 0 and steps == phase1_steps
    assert plan.order.numel() == 100 - n_held and not held & set(plan.order.tolist())
    plan, first, steps, phase1 = t.epoch_plan(2 * phase1_steps, 0)  # phase 2: every image
    assert not phase1 and steps == 10 and sorted(plan.order.tolist()) == list(range(100))
    state = t.fit()
    assert state.step == t.total_steps and state.images_seen == 10 * t.total_steps
    epochs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1.0, 2.0, 3.0]
    assert [r.get("phase") for r in epochs] == [1, 1, None]
    assert all(0 <= r["holdout_accuracy"] <= 1 and "accuracy" not in r for r in epochs[:2])
    assert "holdout_accuracy" not in epochs[2] and epochs[2]["eval_split"] == "test"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["methodology"]["holdout"] == "seeded stand-in" and meta["epoch"] == 3.0
    assert meta["methodology"]["phase1_train_images"] == 100 - n_held


def test_methodology_run_resumes_exactly_across_the_phase_switch(tmp_path):
    from localconv.training.callbacks import Callback

    class StopAt(Callback):
        def after_step(self, trainer, loss):
            if trainer.state.step == trainer.clock.first_steps - 3:
                trainer.should_stop = True

    straight = make_methodology_trainer(tmp_path / "a")
    straight.fit()
    make_methodology_trainer(tmp_path / "b", callbacks=[StopAt()]).fit()
    resumed = make_methodology_trainer(tmp_path / "b", resume=True)
    assert resumed.state.step == straight.clock.first_steps - 3
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_step_follows_the_methodology_like_eager(tmp_path):
    eager = make_methodology_trainer(tmp_path / "eager", step="eager")
    fused = make_methodology_trainer(tmp_path / "fused", step="fused")
    eager.fit()
    fused.fit()
    assert fused.state.step == eager.state.step == eager.total_steps
    for k, v in eager.model.state_dict().items():
        w = fused.model.state_dict()[k]
        assert ((v.float() - w.float()).norm() / v.float().norm().clamp_min(1e-12)).item() <= 1e-4, k


def test_cli_cfg_run_on_a_release_holds_out_batch_5_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOCALCONV_CACHE", str(tmp_path / "cache"))
    tx, ty, sx, sy = synthetic_cifar(n_train=100, n_test=20, seed=4)
    ty, sy = np.arange(100) % 10, np.arange(20) % 10
    data = write_python_release(tmp_path, Arrays(tx, ty, sx, sy, CLASSES))
    (tmp_path / "layers.cfg").write_text(LAYERS)
    (tmp_path / "params.cfg").write_text(PARAMS)
    run = tmp_path / "run"
    assert main(["train", "--cfg", str(tmp_path / "layers.cfg"), "--params", str(tmp_path / "params.cfg"),
                 "--data", str(data), "--out", str(run), "--schedule", "1:1,1:0.1", "--epochs", "2",
                 "--batch-size", "10", "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "phase 1 (1 epoch) trains on 80 images with 20 held out (batch 5)" in err and "float32" in err
    meta = json.loads((run / "run.json").read_text())
    assert meta["options"]["holdout"] == "auto" and meta["amp"] is False
    assert meta["methodology"]["holdout"] == "batch 5" and meta["methodology"]["holdout_per_class"] == [2] * 10
    assert meta["step"] == 8 + 10 and meta["images_seen"] == 180
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert "holdout_accuracy" in epochs[0] and epochs[1]["eval_split"] == "test"
