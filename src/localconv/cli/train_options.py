"""``train``'s option types and what ``--resume`` does with each option given on its command line.

A resumed run continues exactly the run in ``--out``. An option given with ``--resume`` is therefore
either *applied* (and recorded in run.json), because it changes only where, how fast or how visibly
the run continues, or extends it (``--epochs``); or it is *fixed*: refused with exit 2 naming the
option unless its value equals the run's own. The table is in docs/bad_input.md. Nothing here imports
torch (the parser is built before torch is loaded).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import LocalconvError

SEED_MAX = 2**63 - 1  # torch.manual_seed and torch.Generator take 64-bit seeds; keep the sign bit clear

# applied on --resume: they change where, how fast or how visibly the run goes on, not the weights it ends with
# (--epochs extends or completes the run; --data may name the same data at a new place, checked by its classes
# and training-set size)
RESUME_APPLIED = frozenset({
    "out", "resume", "epochs", "device", "step", "compile", "eval_every", "checkpoint_every", "no_progress",
    "data", "cache_dir", "watch", "watch_every", "stop_on_problem", "tensorboard", "tb_every", "nproc_per_node",
})
# fixed by the run: the run's options (run.json "options") and data arguments (run.json "data.args"); any other
# option recorded there is fixed too, and an option recorded nowhere is refused
RESUME_FIXED_OPTIONS = ("recipe", "batch_size", "lr", "lr_scale", "schedule", "seed", "amp", "skip_nonfinite")
RESUME_FIXED_DATA = ("limit_train", "limit_test", "val_split")
MODEL_ARGS = ("model", "cfg", "params", "crop", "conv1_std", "conv2_std", "softmax_output", "in_chans")
RECORDED_AS = {"recipe_set": "recipe_overrides"}  # options recorded in run.json "options" under another name


def seed_value(text: str) -> int:
    """argparse type of ``--seed``: a whole number in 0..2**63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63-1, got {text}")
    return value


def recipe_setting(text: str) -> tuple[str, Any]:
    """argparse type of ``--recipe-set``: ``KEY=VALUE`` with a JSON value (true, false, null, a number), else
    the text itself; the name and the value are checked against the recipe's settings (training/recipes.py)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. batch_size=128, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def out_folder(text: str) -> Path:
    """argparse type of ``--out``: a non-empty path (``--out ''`` would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty path")
    return Path(text)


def record_given(parser: argparse.ArgumentParser) -> None:
    """Make every option of ``parser`` record its dest in ``namespace._given`` when it is on the command line.

    argparse calls an action only for options that are given, so this tells ``--seed 0`` from the default
    0; --resume needs that to refuse exactly the options a user typed.
    """
    for action in parser._actions:  # noqa: SLF001 (argparse has no public list of its actions)
        base = type(action)
        if getattr(base, "_records_given", False) or isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue

        def call(self: argparse.Action, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None, _base: type = base) -> None:
            given = set(getattr(namespace, "_given", None) or ())
            namespace._given = given | {self.dest}  # a new set: never shared with the parser's defaults
            _base.__call__(self, parser, namespace, values, option_string)

        action.__class__ = type(f"Given{base.__name__}", (base,), {"__call__": call, "_records_given": True})


def given_options(args: argparse.Namespace) -> set[str]:
    return set(getattr(args, "_given", None) or ())


def _flag(dest: str) -> str:
    return "--amp/--no-amp" if dest == "amp" else "--" + dest.replace("_", "-")


def _shown(value: Any) -> str:
    """An option's value as it is typed: ``--recipe-set``'s dict as ``KEY=VALUE`` pairs."""
    if isinstance(value, dict):
        return " ".join(f"{key}={json.dumps(item)}" for key, item in value.items()) or "none"
    return str(value)


def check_resume_options(args: argparse.Namespace, meta: dict[str, Any]) -> None:
    """Refuse (exit 2, naming the option) every option given with --resume that would change the run."""
    given = given_options(args)
    for dest in sorted(given):
        if dest in RESUME_APPLIED or dest in MODEL_ARGS:  # the model is compared as a whole by the caller
            continue
        value = getattr(args, dest, None)
        data_args = meta["data"].get("args", {})
        key = RECORDED_AS.get(dest, dest)
        if dest == "recipe_set":  # KEY=VALUE pairs, recorded as one dict
            value = dict(value)
        if dest in RESUME_FIXED_OPTIONS or key in meta["options"]:
            recorded, present = meta["options"].get(key), key in meta["options"]
        elif dest in RESUME_FIXED_DATA or dest in data_args:  # also data options recorded in data.args
            recorded, present = data_args.get(dest), True
        else:  # not recorded in the run: cannot be shown to be the run's own, so it is refused
            recorded, present = None, False
        if present and value == recorded:
            continue  # the run's own value, repeated
        shown = "" if isinstance(value, bool) else f" {_shown(value)}"
        theirs = f" (the run's: {'not set' if recorded is None else _shown(recorded)})" if present else ""
        raise LocalconvError(f"{_flag(dest)}{shown}: --resume continues the run with its own settings{theirs}; "
                             f"omit {_flag(dest)}, or start a new run with another --out")
    if args.epochs is not None:
        done = float(meta.get("epoch", 0) or 0)
        if args.epochs < done:
            raise LocalconvError(f"--epochs {args.epochs:g}: the run in {args.out} has already trained "
                                 f"{done:g} epochs; give at least that many")
    model_given = [dest for dest in MODEL_ARGS if dest in given]
    if model_given and not (args.model or args.cfg):
        flag = _flag(model_given[0])
        raise LocalconvError(f"{flag}: --resume continues the run's own model; omit {flag}, or start a new run "
                             "with another --out")


def check_resume_data(out: Path, meta: dict[str, Any], classes: list[str], n_train: int) -> None:
    """The data given with --resume must be the run's: the same class names and training-set size."""
    if list(classes) != list(meta["classes"]):
        raise LocalconvError(f"--data: classes {list(classes)} differ from those of the run in {out} "
                             f"{list(meta['classes'])}; --resume continues the run on its own data")
    recorded = meta["data"].get("n_train")
    if isinstance(recorded, int) and recorded != n_train:
        raise LocalconvError(f"--data: {n_train} training images, the run in {out} was trained on {recorded}; "
                             "--resume continues the run on its own data")
