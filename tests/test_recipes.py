"""Recipe settings: overrides, weight decay on every weight, Nesterov, the precision a fast run picks, and a
resumed run continuing with its own recorded settings whatever this version's defaults are."""
from __future__ import annotations

import json

import pytest
import torch

import localconv
import localconv.training.engine as engine
from localconv.data.loader import select_splits
from localconv.errors import LocalconvError
from localconv.training.engine import Trainer, TrainOptions


def make_trainer(fake, run_dir, model_name="tf-tutorial", resume=False, **opts):  # noqa: ANN001, ANN201
    tx, ty, sx, sy = fake
    splits = select_splits(tx, ty, sx, sy, limit_train=96)
    torch.manual_seed(0)
    model = localconv.create_model(model_name)
    opts.setdefault("batch_size", 24)
    options = TrainOptions(device="cpu", progress=False, **opts)
    return Trainer(model, splits, run_dir, options, data_info={"args": {}}, resume=resume)


def test_overrides_replace_settings_and_bad_ones_are_refused_by_name(fake_cifar, tmp_path):
    t = make_trainer(fake_cifar, tmp_path / "a", recipe="fast", epochs=1,
                     batch_size=None,
                     recipe_overrides={"batch_size": 32, "ema_decay": None, "label_smoothing": 0.2})
    assert t.batch_size == 32 and t.ema is None and t.recipe.label_smoothing == 0.2
    assert t.metadata(False)["options"]["recipe_overrides"]["batch_size"] == 32
    for bad, words in (({"batch": 32}, "'batch' is unknown"), ({"batch_size": 0}, "batch_size: expected"),
                       ({"nesterov": 1}, "nesterov: expected true or false"),
                       ({"weight_decay": -1.0}, "weight_decay: expected"),
                       ({"label_smoothing": 1}, r"label_smoothing: expected a number in \[0, 1\), got 1$")):
        with pytest.raises(LocalconvError, match=words):
            make_trainer(fake_cifar, tmp_path / "b", recipe="fast", recipe_overrides=bad)


def test_one_weight_decay_on_every_weight_replaces_the_models_own(fake_cifar, tmp_path):
    t = make_trainer(fake_cifar, tmp_path / "a", recipe="fast", epochs=1,
                     recipe_overrides={"weight_decay": 5e-4, "nesterov": True})
    names = {id(p): n for n, p in t.model.named_parameters()}
    for g in t.optimizer.param_groups:
        assert g["nesterov"] is True
        for p in g["params"]:
            assert g["wc"] == (0.0 if names[id(p)].endswith("bias") else 5e-4), names[id(p)]
    assert sum(len(g["params"]) for g in t.optimizer.param_groups) == len(names)
    assert not t.recipe.model_decay_in_loss  # TF's loss-term decay is off: the update decays instead
    # uniform logits: smoothed and plain cross-entropy are both ln 10, so any difference is the decay term
    logits, labels = torch.zeros(4, 10, requires_grad=True), torch.arange(4)
    loss, terms = t.loss_terms(logits, labels)
    assert loss.item() == pytest.approx(terms[1].item(), rel=1e-6)  # no decay term in the loss
    assert terms[0].item() > loss.item() + 1e-3  # loss/total reports the update's decay
    own = make_trainer(fake_cifar, tmp_path / "b", recipe="fast", epochs=1, recipe_overrides={"weight_decay": None})
    assert own.recipe.model_decay_in_loss and all(g["wc"] == 0.0 for g in own.optimizer.param_groups)
    assert own.loss_terms(logits, labels)[0].item() > terms[1].item() + 1e-3  # TF's decay in the loss


def test_cfg_model_untied_biases_are_not_decayed(fake_cifar, tmp_path):
    t = make_trainer(fake_cifar, tmp_path / "a", model_name="cc-11pct", recipe="fast", epochs=1,
                     recipe_overrides={"weight_decay": 1e-3})
    decayed = {g["name"] for g in t.optimizer.param_groups if g["wc"]}
    assert decayed and all(name.endswith("weight") for name in decayed)
    assert any(g["name"].endswith("bias") and g["params"][0].dim() == 3 and g["wc"] == 0.0
               for g in t.optimizer.param_groups)  # local layers' untied [O, H, W] biases


@pytest.mark.native_cpu_bf16
def test_fast_recipe_uses_bf16_on_a_cpu_with_native_bf16_only(fake_cifar, tmp_path, monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(engine, "native_bf16", lambda device, native=native: native)
        fast = make_trainer(fake_cifar, tmp_path / f"f{native}", recipe="fast", epochs=1)
        original = make_trainer(fake_cifar, tmp_path / f"o{native}", recipe="original", epochs=1)
        assert fast.amp is native and original.amp is False
        assert make_trainer(fake_cifar, tmp_path / f"n{native}", recipe="fast", amp=False).amp is False


def test_resume_continues_with_the_recorded_settings_and_precision(fake_cifar, tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = make_trainer(fake_cifar, run, recipe="fast", epochs=1, batch_size=24, eval_every=0,
                         recipe_overrides={"nesterov": False, "weight_decay": None})
    first.fit()
    meta = json.loads((run / "run.json").read_text())
    assert meta["amp"] is False and meta["recipe"]["nesterov"] is False
    # this version's defaults change (as when a newer localconv resumes an older run): the run keeps its own
    default_settings = engine.default_settings
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    monkeypatch.setattr(engine, "default_settings", lambda *a, **k: engine.with_overrides(
        first.recipe, {"nesterov": True, "label_smoothing": 0.3, "weight_decay": 1e-3}))
    resumed = make_trainer(fake_cifar, run, resume=True, recipe="fast", epochs=2, batch_size=24, eval_every=0)
    assert resumed.amp is False
    assert (resumed.recipe.nesterov, resumed.recipe.label_smoothing, resumed.recipe.weight_decay) == (False, 0.1, None)
    # a run.json written before a setting existed: the setting's default (the behaviour of that time), not
    # this version's fast-recipe value
    monkeypatch.setattr(engine, "default_settings", default_settings)
    assert make_trainer(fake_cifar, tmp_path / "fresh", recipe="fast").recipe.nesterov is True  # today's CPU default
    del meta["recipe"]["nesterov"], meta["recipe"]["lr_boost"]
    (run / "run.json").write_text(json.dumps(meta))
    old = make_trainer(fake_cifar, run, resume=True, recipe="fast", batch_size=24)
    assert old.recipe.nesterov is False and old.recipe.lr_boost == 3.0


def test_photometric_setting_drops_the_jitter_from_training_batches_only(fake_cifar, tmp_path):
    kept = make_trainer(fake_cifar, tmp_path / "a", recipe="fast", epochs=1)
    dropped = make_trainer(fake_cifar, tmp_path / "b", recipe="fast", epochs=1,
                           recipe_overrides={"photometric": False})
    assert kept.train_spec.photometric and not dropped.train_spec.photometric
    plan = dropped.epoch_plan(0, seed=0)[0]
    assert torch.equal(plan.brightness, torch.zeros_like(plan.brightness))
    assert torch.equal(plan.contrast, torch.ones_like(plan.contrast))
    assert dropped.model.input_spec.photometric  # the model (and its run.json input_spec) is unchanged
    assert kept.epoch_plan(0, seed=0)[0].brightness.abs().sum() > 0


def test_recipe_set_on_the_command_line(tmp_path):
    from localconv.cli.main import build_parser

    args = build_parser().parse_args(["train", "--model", "tf-tutorial", "--out", str(tmp_path / "r"),
                                      "--recipe-set", "batch_size=128", "--recipe-set", "ema_decay=null",
                                      "--recipe-set", "tta=flip", "--recipe-set", "nesterov=true"])
    assert dict(args.recipe_set) == {"batch_size": 128, "ema_decay": None, "tta": "flip", "nesterov": True}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "tf-tutorial", "--out", "r", "--recipe-set", "nesterov"])


def test_crop_jitter_keeps_crops_near_the_centre_and_the_default_unchanged(fake_cifar, tmp_path):
    from localconv.data.augment import draw_epoch_plan
    from localconv.data.input_spec import InputSpec

    spec = InputSpec(crop=24)
    anywhere = draw_epoch_plan(2000, spec, 3, 1)
    assert anywhere.offsets.min() == 0 and anywhere.offsets.max() == 8  # the whole 32x32 image
    assert torch.equal(draw_epoch_plan(2000, spec, 3, 1, max_shift=None).offsets, anywhere.offsets)
    near = draw_epoch_plan(2000, spec, 3, 1, max_shift=2)
    assert near.offsets.min() == 2 and near.offsets.max() == 6  # centre offset 4 +- 2
    assert torch.equal(near.order, anywhere.order) and torch.equal(near.flips, anywhere.flips)
    assert torch.equal(draw_epoch_plan(50, spec, 3, 1, max_shift=4).offsets, draw_epoch_plan(50, spec, 3, 1).offsets)
    t = make_trainer(fake_cifar, tmp_path / "a", recipe="fast", epochs=1, recipe_overrides={"crop_jitter": 1})
    offsets = t.epoch_plan(0, seed=0)[0].offsets
    assert offsets.min() >= 3 and offsets.max() <= 5


def test_resume_accepts_the_runs_own_recipe_set_and_refuses_another():
    import argparse

    from localconv.cli.train_options import check_resume_options

    meta = {"options": {"recipe": "fast", "recipe_overrides": {"nesterov": True}}, "data": {"args": {}}}

    def args(*pairs):  # noqa: ANN001, ANN202
        return argparse.Namespace(recipe_set=list(pairs), epochs=None, out="run", model=None, cfg=None,
                                  _given={"recipe_set"})

    check_resume_options(args(("nesterov", True)), meta)  # the run's own setting, repeated
    with pytest.raises(LocalconvError, match=r"^--recipe-set nesterov=false: .*\(the run's: nesterov=true\)"):
        check_resume_options(args(("nesterov", False)), meta)


def test_warmup_epochs_sets_the_fast_schedules_ramp_and_the_default_is_unchanged(fake_cifar, tmp_path):
    # 96 images, batch 24: 4 steps an epoch, 10 epochs = 40 steps.
    def ramp(**overrides):  # noqa: ANN003, ANN202
        t = make_trainer(fake_cifar, tmp_path / str(len(list(tmp_path.iterdir()))), recipe="fast", epochs=10,
                         recipe_overrides=overrides or None)
        return [t.schedule.multiplier(step) for step in range(40)]

    default = ramp()
    assert default[:6] == [0.25, 0.5, 0.75, 1.0, 1.0, 1 - 1 / 36]  # one epoch, then the decay from the peak
    half = ramp(warmup_epochs=0.5)
    assert half[:4] == [0.5, 1.0, 1.0, 1 - 1 / 38]
    assert ramp(warmup_epochs=0)[0] == 1.0  # no warm-up: the peak at once
    longest = ramp(warmup_epochs=20)  # longer than the run: a ramp over all of it
    assert longest[-1] == 1.0 and longest[0] == 1 / 40
    with pytest.raises(LocalconvError, match=r"warmup_epochs: expected a finite number >= 0"):
        ramp(warmup_epochs=-1)
