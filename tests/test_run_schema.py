"""run.json's one schema (training/run_schema.py): every field named, one line, no traceback.

The CLI cases (eval, predict, train --resume, compare on an edited run.json) are in test_bad_input.py;
here the schema itself, on a run.json written by a real run: it accepts what localconv writes (also
without optional fields, as older runs, and with fields it does not know, as newer ones), and refuses
a wrong value anywhere with the dotted name of the field.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from localconv.errors import CheckpointError
from localconv.training.checkpoint import read_meta
from localconv.training.run_schema import RUN_SCHEMA, validate_run_meta

# a run.json as Trainer.metadata writes it (tf-tutorial-conv, 40 images), trimmed of nothing
GOOD = {
    "format": "localconv-run/1", "files": {"model": "model-000000002.safetensors", "ema": "ema-000000002.safetensors",
                                           "optimizer": "optim-000000002.pt"},
    "sha256": {"model": "ab", "ema": "cd", "optimizer": "ef"},
    "model": {"name": "tf-tutorial-conv", "kwargs": {"num_classes": 10}}, "model_params": 174250,
    "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "options": {"recipe": "original", "epochs": 1.0, "batch_size": 20, "lr": None, "lr_scale": 1.0, "schedule": None,
                "seed": 0, "device": "cpu", "amp": None, "compile": False, "step": "auto", "eval_every": 1,
                "checkpoint_every": 1, "skip_nonfinite": False, "progress": False, "log_every": None},
    "data": {"source": "image tree", "args": {"data": "/d", "cache_dir": None, "limit_train": None, "limit_test": None,
                                              "val_split": 0}, "n_train": 40, "n_val": 0, "n_test": 20},
    "step": 2, "epoch": 1.0, "ema_updates": 2, "images_seen": 40, "train_time_s": 0.5, "batch_size": 20, "epochs": 1.0,
    "steps_per_epoch": 2, "total_steps": 2, "world_size": 1, "best_accuracy": 0.1, "last_accuracy": 0.1,
    "skipped_steps": 0, "complete": True, "stop_reason": "", "eval_split": "test", "device": "cpu",
    "recipe": {"name": "original", "batch_size": 20, "epochs": 1.0, "ema_decay": 0.9999, "ema_warmup": True,
               "label_smoothing": 0.0, "use_regularization_loss": True, "tta": "none", "nesterov": False,
               "weight_decay": None, "photometric": None, "crop_jitter": None, "lr_boost": 3.0, "warmup_epochs": None,
               "notes": []},
}


def edited(path: str, value: object) -> dict:
    meta = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target = meta
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return meta


def test_what_localconv_writes_is_accepted() -> None:
    validate_run_meta(GOOD, "run.json")
    older = copy.deepcopy(GOOD)
    for key in ("log_every", "step", "compile"):  # options added over time
        del older["options"][key]
    for key in ("epoch", "eval_split", "skipped_steps"):
        del older[key]
    validate_run_meta(older, "run.json")
    validate_run_meta({**GOOD, "image_size": 32, "options": {**GOOD["options"], "new_option": [1]}}, "run.json")
    validate_run_meta(edited("options.device", "cuda:1"), "run.json")
    validate_run_meta(edited("model", {"name": None, "cfg": {"layers": "[data]"}}), "run.json")


BAD = [
    ("options.seed", "x", "options.seed: expected an integer in 0..9223372036854775807, got 'x'"),
    ("options.seed", -1, "options.seed: expected an integer in 0..9223372036854775807, got -1"),
    ("options.seed", True, "options.seed: expected an integer"),
    ("options.device", "tpu", "options.device: expected one of auto, cpu, cuda, cuda:..., got 'tpu'"),
    ("options.log_every", 2.5, "options.log_every: expected an integer >= 0 or null, got 2.5"),
    ("options.schedule", ["1:1"], "options.schedule: expected a string or null, got ['1:1']"),
    ("options.epochs", float("nan"), "options.epochs: expected a finite number > 0 or null, got nan"),
    ("options.recipe", "slow", "options.recipe: expected one of original, fast, got 'slow'"),
    ("options.amp", "yes", "options.amp: expected true or false or null, got 'yes'"),
    ("options", [], "options: expected an object, got []"),
    ("model.kwargs", "num_classes=10", "model.kwargs: expected an object, got 'num_classes=10'"),
    ("model.name", "", "model.name: expected a non-empty string or null, got ''"),
    ("data.args", None, "data.args: expected an object, got None"),
    ("data.args.val_split", -3, "data.args.val_split: expected an integer >= 0 or null, got -3"),
    ("data.n_train", "40", "data.n_train: expected an integer >= 1, got '40'"),
    ("classes", [], "classes: expected a non-empty list, got []"),
    ("classes", ["cat", ""], "classes[1]: expected a non-empty string, got ''"),
    ("classes", ["cat", "cat"], "classes[1]: duplicate value 'cat'"),
    ("files.ema", 3, "files.ema: expected a non-empty string, got 3"),
    ("step", KeyError, "step: missing"),
    ("train_time_s", -1, "train_time_s: expected a finite number >= 0, got -1"),
    ("best_accuracy", "high", "best_accuracy: expected a number in [0, 1] or null, got 'high'"),
    ("temperature", 0, "temperature: expected a number in [0.001, 1000], got 0"),
    ("temperature", 1e-300, "temperature: expected a number in [0.001, 1000], got 1e-300"),
    ("temperature", 1e9, "temperature: expected a number in [0.001, 1000], got 1000000000.0"),
    ("step", 10**30, "step: expected an integer in 0..9007199254740992, got 1000000000000000000000000000000"),
    ("last_accuracy", 1.5, "last_accuracy: expected a number in [0, 1] or null, got 1.5"),
    ("model.kwargs", {"a": json.loads("[" * 40 + "]" * 40)}, "objects and lists nested more than 32 levels deep"),
    ("complete", 1, "complete: expected true or false, got 1"),
    ("eval_split", "train", "eval_split: expected one of test, val, got 'train'"),
    ("recipe.ema_decay", 1.0, "recipe.ema_decay: expected a number in [0, 1) or null, got 1.0"),
    ("recipe.crop_jitter", -2, "recipe.crop_jitter: expected an integer >= 0 or null, got -2"),
    ("recipe.nesterov", "yes", "recipe.nesterov: expected true or false, got 'yes'"),
    ("options.recipe_overrides", {"tta": "ten"}, "options.recipe_overrides.tta: expected one of none, flip"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_a_wrong_field_is_named_in_one_line(path: str, value: object, message: str) -> None:
    with pytest.raises(CheckpointError) as info:
        validate_run_meta(edited(path, value), "run/run.json")
    text = str(info.value)
    assert text.startswith(f"run/run.json: {message}"), text
    assert "\n" not in text and len(text) < 200


def test_recipe_settings_spec_covers_every_setting() -> None:
    """The schema of recipe settings (also what --recipe-set accepts) names each RecipeSettings field but the
    recipe's name and notes, and a run records them all (GOOD's record is what Trainer.metadata writes)."""
    from dataclasses import fields

    from localconv.training.recipes import RecipeSettings
    from localconv.training.run_schema import RECIPE_SETTINGS

    settings = {f.name for f in fields(RecipeSettings)} - {"name", "notes"}
    assert set(RECIPE_SETTINGS.fields) == settings
    assert set(GOOD["recipe"]) == settings | {"name", "notes"}


def test_long_values_are_cut_in_messages() -> None:
    with pytest.raises(CheckpointError) as info:
        validate_run_meta(edited("options.schedule", 10**500), "run.json")
    assert len(str(info.value)) < 150


def test_read_meta_validates_the_file(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(edited("options.seed", "x")))
    with pytest.raises(CheckpointError, match=r"run\.json: options\.seed: expected an integer"):
        read_meta(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps(GOOD))
    assert read_meta(tmp_path)["step"] == 2
    assert RUN_SCHEMA.required  # the schema names its required fields


# run.json as a Ctrl-C or SIGTERM leaves it: 3 steps into an epoch of 4 steps of 20 images
CUT = {**GOOD, "step": 7, "ema_updates": 7, "steps_per_epoch": 4, "total_steps": 8, "complete": False,
       "stop_reason": "terminated", "partial_epoch": {"loss_sum": [7.0, 6.9], "steps": 3, "mark_loss_sum": [4.6, 4.5],
                                                      "mark_steps": 2, "train_hits": 6, "train_seen": 60}}


@pytest.mark.parametrize("change, message", [
    ({"best_step": 9}, "best_step 9 is after step 7"),
    ({"ema_updates": 8}, "ema_updates 8 exceeds step 7"),
    ({"ema_updates": 6}, "ema_updates 6 is not step 7 less 0 skipped steps"),
    ({"skipped_steps": 1}, "ema_updates 7 is not step 7 less 1 skipped steps"),
    ({"best_accuracy": 0.05}, "best_accuracy 0.05 is below last_accuracy 0.1"),
    ({"partial_epoch": {**CUT["partial_epoch"], "steps": 5}}, "partial_epoch counts 5 steps"),
    ({"partial_epoch": {**CUT["partial_epoch"], "mark_steps": 4}}, "partial_epoch counts 3 steps (4 since"),
    ({"partial_epoch": {**CUT["partial_epoch"], "mark_loss_sum": [7.5, 4.5]}}, "mark_loss_sum exceeds loss_sum"),
    ({"partial_epoch": {**CUT["partial_epoch"], "loss_sum": [-1, 6.9]}}, "partial_epoch.loss_sum[0]: expected"),
    ({"partial_epoch": {**CUT["partial_epoch"], "train_hits": 61}}, "train_hits and train_seen do not fit"),
    ({"partial_epoch": {**CUT["partial_epoch"], "train_seen": 61}}, "train_hits and train_seen do not fit"),
])
def test_counters_that_contradict_each_other_are_refused(change: dict, message: str) -> None:
    """Each value fits the schema alone, but not the others: --resume would log wrong loss means, training
    accuracies or best steps (hand-edited run.json, issue 21)."""
    validate_run_meta(CUT, "run.json")
    with pytest.raises(CheckpointError, match="was the file edited") as info:
        validate_run_meta({**CUT, **change}, "run.json")
    assert message in str(info.value) and "\n" not in str(info.value)
