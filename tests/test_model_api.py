"""The Python API in timm's style: list_models(pattern), create_model(name, num_classes=, in_chans=),
get_classifier / reset_classifier, pretrained_cfg, transforms / preprocess, and the refusals of
nonsense (bad options, wrong input sizes, raw pixels given as floats)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import localconv
from localconv.data.augment import eval_batch
from localconv.errors import LocalconvError, ModelError
from localconv.models.registry import build_model_from_spec, model_spec

TF_MODELS = ["tf-tutorial", "tf-tutorial-conv", "tf-tutorial-local"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def raw_images(n: int = 4, chans: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, chans, 32, 32), generator=gen, dtype=torch.uint8)


# ------------------------------------------------------------------ names and the registry

def test_list_models_pattern_and_names_with_underscores() -> None:
    assert localconv.list_models("cc-*") == ["cc-11pct", "cc-13pct", "cc-18pct", "cc-80sec"]
    assert localconv.list_models("tf_*") == sorted(TF_MODELS + ["tf-tutorial-2016"])  # + the 2016 bug, on purpose
    assert localconv.list_models("*local*") == ["tf-tutorial-local"]
    assert localconv.list_models("resnet*") == []
    assert len(localconv.list_models()) == 8
    for name in ("tf_tutorial", "TF-Tutorial", "tf-tutorial"):
        model = localconv.create_model(name)
        assert model.model_name == "tf-tutorial" and n_params(model) == 1_068_298
    assert localconv.create_model("cc_11pct").model_name == "cc-11pct"
    with pytest.raises(ModelError, match="unknown model 'tf_tutorial_x'"):
        localconv.create_model("tf_tutorial_x")


def test_default_initial_weights_are_unchanged() -> None:
    """The resettable head keeps the random draws in their old order: seed 0 gives the weights it always gave
    (fingerprints taken with the code before the head could be reset)."""
    expected = {"tf-tutorial": 31661.0354, "tf-tutorial-conv": 5555.8239, "tf-tutorial-local": 67811.8481,
                "cc-80sec": 5893.1638}
    for name, value in expected.items():
        torch.manual_seed(0)
        model = localconv.create_model(name)
        with torch.no_grad():
            total = sum(float(p.double().abs().sum()) for p in model.parameters())
        assert total == pytest.approx(value, rel=1e-6), name


# ------------------------------------------------------------------ num_classes / in_chans

@pytest.mark.parametrize("name", TF_MODELS + ["cc-11pct", "cc-18pct"])
def test_num_classes(name: str) -> None:
    ten, three = localconv.create_model(name), localconv.create_model(name, num_classes=3)
    head = ten.get_classifier()
    fan_in = head.in_features if isinstance(head.in_features, int) else sum(head.in_features)
    assert n_params(ten) - n_params(three) == 7 * (fan_in + 1)  # only the head changes
    assert three.num_classes == 3 and three.pretrained_cfg["num_classes"] == 3
    assert three.predict_proba(raw_images(2)).shape == (2, 3)
    assert model_spec(three)["kwargs"] == {"num_classes": 3} and model_spec(ten)["kwargs"] == {}
    rebuilt = build_model_from_spec(model_spec(three))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in
                                                                    three.state_dict().items()}


def test_in_chans_where_the_architecture_allows_it() -> None:
    model = localconv.create_model("tf-tutorial", in_chans=1, num_classes=4)
    assert model.conv1.weight.shape == (64, 1, 5, 5) and model.pretrained_cfg["input_size"] == (1, 24, 24)
    assert model.predict_proba(raw_images(2, chans=1)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"\[N, 1, 32, 32\]"):
        model.preprocess(raw_images(2, chans=3))
    for name in ("cc-11pct", "cc-80sec"):
        with pytest.raises(ValueError, match="takes 3-channel images only.*fixes the input channels"):
            localconv.create_model(name, in_chans=1)
    assert localconv.create_model("cc-11pct", in_chans=3).model_name == "cc-11pct"
    four = localconv.create_model("tf-tutorial", num_classes=np.int64(4))
    assert four.num_classes == 4 and type(model_spec(four)["kwargs"]["num_classes"]) is int


@pytest.mark.parametrize("options", [{"conv2_std": math.nan}, {"conv2_std": 0.0}, {"conv2_std": -1e-2},
                                     {"conv1_std": math.inf}, {"conv1_std": "1e-2"}, {"num_classes": 0},
                                     {"num_classes": 1}, {"num_classes": -3}, {"num_classes": 2.5},
                                     {"num_classes": True}, {"num_classes": "10"}, {"in_chans": 0},
                                     {"in_chans": 1.5}])
def test_nonsense_options_are_value_errors(options: dict) -> None:
    with pytest.raises(ValueError) as info:
        localconv.create_model("tf-tutorial", **options)
    assert isinstance(info.value, LocalconvError)  # and exit 2 when they come from the CLI
    assert next(iter(options)) in str(info.value)


def test_nonsense_num_classes_for_cfg_models() -> None:
    for bad in (0, 1, 2.0, None, True):
        with pytest.raises(ValueError, match="num_classes"):
            localconv.create_model("cc-80sec", num_classes=bad)


# ------------------------------------------------------------------ classifier head

@pytest.mark.parametrize("name", ["tf-tutorial", "tf-tutorial-local", "cc-11pct"])
def test_get_and_reset_classifier(name: str) -> None:
    model = localconv.create_model(name)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(model_head_name(model))}
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Module) and next(head.parameters()).shape[0] == 10
    model.reset_classifier(5)
    assert model.num_classes == 5 and model.get_classifier() is not head
    assert model(model.preprocess(raw_images(3))).shape == (3, 5)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in body.items())  # the rest of the network is kept
    assert model_spec(model)["kwargs"] == {"num_classes": 5}
    rebuilt = build_model_from_spec(model_spec(model))
    rebuilt.load_state_dict(state)  # a run folder can rebuild the reset model
    model.reset_classifier(10)
    assert model_spec(model)["kwargs"] == {}
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(0)


def model_head_name(model: localconv.models.Classifier) -> str:
    return next(name for name, module in model.named_modules() if module is model.get_classifier())


# ------------------------------------------------------------------ metadata and preprocessing

def test_pretrained_cfg() -> None:
    tf = localconv.create_model("tf-tutorial").pretrained_cfg
    assert tf["input_size"] == (3, 24, 24) and tf["source_size"] == (3, 32, 32) and tf["crop_mode"] == "center"
    assert tf["normalization"] == "per-image standardization" and tf["num_classes"] == 10
    assert tf["classes"] is None and tf["architecture"] == "tf-tutorial" and tf["crop"] == 24
    cc = localconv.create_model("cc-18pct").pretrained_cfg
    assert cc["input_size"] == (3, 32, 32) and cc["normalization"] == "per-pixel mean subtraction"
    assert cc["train_augmentation"] == {"random_crop": False, "flip": False, "brightness_contrast": False}


@pytest.mark.parametrize("name", ["tf-tutorial", "cc-11pct"])
def test_preprocess_and_predict_proba_take_raw_uint8(name: str) -> None:
    model = localconv.create_model(name).eval()
    if model.needs_pixel_mean():
        model.set_pixel_mean(torch.full((3, 32, 32), 120.0))
    images = raw_images(4)
    mean = getattr(model, "pixel_mean", None) if model.needs_pixel_mean() else None
    expected = eval_batch(images, model.input_spec, mean)  # what `localconv eval` feeds the network
    assert torch.equal(model.preprocess(images), expected)
    assert torch.equal(localconv.transforms(model)(images), expected)
    assert torch.equal(model.preprocess(images[0]), expected[:1])  # one [C, H, W] image
    probs = model.predict_proba(images)
    assert torch.allclose(probs, model.predict_proba(expected)) and torch.allclose(probs.sum(1), torch.ones(4))


def test_preprocess_refuses_other_layouts_and_types() -> None:
    model = localconv.create_model("tf-tutorial")
    with pytest.raises(ValueError, match="channels-last.*permute"):
        model.preprocess(raw_images(2).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="uint8"):
        model.preprocess(raw_images(2).float())
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\].*got \[2, 3, 24, 24\]"):
        model.preprocess(raw_images(2)[:, :, :24, :24])
    with pytest.raises(ValueError, match="transforms"):
        localconv.transforms(torch.nn.Linear(2, 2))


def test_raw_pixels_given_as_floats_are_refused() -> None:
    model = localconv.create_model("tf-tutorial")
    pixels = raw_images(2)[:, :, 4:28, 4:28]
    for floats in (pixels.float(), pixels.float() / 255):  # 0..255 and 0..1 scales
        with pytest.raises(ValueError, match="not per-image standardized"):
            model.predict_proba(floats)
    model.predict_proba(torch.randn(3, 3, 24, 24))  # standardized-like inputs pass
    model.predict_proba(model.preprocess(torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)))  # a flat image


@pytest.mark.parametrize("name,good,bad", [("cc-11pct", 24, (32, 40, 20)), ("cc-13pct", 24, (32,)),
                                           ("cc-18pct", 32, (24, 40)), ("tf-tutorial", 24, (32,)),
                                           ("tf-tutorial-local", 24, (28,))])
def test_wrong_input_size_is_refused(name: str, good: int, bad: tuple[int, ...]) -> None:
    model = localconv.create_model(name)
    assert model(torch.randn(2, 3, good, good)).shape == (2, 10)
    for side in bad:
        x = torch.randn(2, 3, side, side)
        for call in (model, model.predict_proba):
            with pytest.raises(ValueError, match=rf"\[N, 3, {good}, {good}\], got \[2, 3, {side}, {side}\]"):
                call(x)
    with pytest.raises(ValueError, match=r"\[N, 3, "):
        model(torch.randn(2, 1, good, good))


def test_load_run_refuses_an_unknown_weights_choice(tmp_path) -> None:
    for which in ("emma", "EMA", None):
        with pytest.raises(ValueError, match="'ema'.*'raw'"):
            localconv.load_run(tmp_path, which=which)


def test_reset_classifier_forgets_the_old_heads_metadata(tmp_path, monkeypatch) -> None:
    """Issue 24: after load_run + reset_classifier(5), nothing may still describe the old 10-way head."""
    from run_fixtures import image_tree, train_run

    monkeypatch.setenv("LOCALCONV_CACHE", str(tmp_path / "cache"))  # never ~/.cache

    from localconv.training.checkpoint import update_meta

    run = train_run(image_tree(tmp_path / "data"), tmp_path / "run")
    update_meta(run, temperature=2.5)  # as `localconv eval --calibrate` stores it
    model, meta = localconv.load_run(run)
    assert model.classes == meta["classes"] and len(model.classes) == 10 and float(model.temperature) == 2.5
    logits = model(model.preprocess(raw_images(2)))
    model.reset_classifier(5)
    assert model.classes is None and model.pretrained_cfg["classes"] is None
    assert float(model.temperature) == 1.0 and model.pretrained_cfg["num_classes"] == 5
    new_logits = model(model.preprocess(raw_images(2)))
    assert torch.allclose(model.predict_proba(raw_images(2)), torch.softmax(new_logits, -1))  # not scaled by 2.5
    assert logits.shape == (2, 10) and new_logits.shape == (2, 5)
    cfg_model = localconv.create_model("cc-80sec")  # the cfg networks replace their heads their own way
    cfg_model.classes, _ = list("abcdefghij"), cfg_model.temperature.fill_(3.0)
    cfg_model.reset_classifier(4)
    assert cfg_model.classes is None and float(cfg_model.temperature) == 1.0
