"""The one schema of ``run.json``, checked whenever a run is read (eval, predict, resume, compare, load_run).

A hand-edited or damaged file is refused with one line naming the field, e.g.
``run/run.json: options.seed: expected an integer >= 0, got 'x'``, instead of a traceback later.
The schema is declarative: to add a field, add one entry to :data:`RUN_SCHEMA`. Fields not listed
are accepted as they are (newer writers may add some), and listed fields marked optional may be
absent (older runs lack them); a present field must have the listed type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError

SEED_MAX = 2**63 - 1  # torch.manual_seed takes at most a 64-bit value; epoch seeds are reduced mod 2**63 - 1
INT_MAX = 2**53  # every other integer (steps, counts, sizes): exact in a float, far beyond any real run
# A softmax temperature outside this range turns probabilities into 0/1 or NaN (logits / 1e-300 overflow);
# `eval --calibrate` keeps its fit inside it.
TEMPERATURE_RANGE = (1e-3, 1e3)
MAX_DEPTH = 32  # nesting of objects and lists: what localconv writes is at most 5 deep


class SchemaError(ValueError):
    """A value that does not fit its spec; ``where`` is the dotted field name."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, kw_only=True)
class Spec:
    nullable: bool = False

    def check(self, value: Any, where: str) -> None:
        if value is None and self.nullable:
            return
        problem = self.problem(value)
        if problem:
            raise SchemaError(where, f"expected {problem}, got {_shown(value)}")
        self.check_items(value, where)

    def problem(self, value: Any) -> str | None:  # the expectation when ``value`` does not fit, else None
        raise NotImplementedError

    def check_items(self, value: Any, where: str) -> None:  # containers check their members
        return None

    def expectation(self, text: str) -> str:
        return f"{text} or null" if self.nullable else text


@dataclass(frozen=True, kw_only=True)
class Int(Spec):
    min: int | None = None
    max: int = INT_MAX

    def problem(self, value: Any) -> str | None:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        ok = is_int and (self.min is None or value >= self.min) and value <= self.max
        # the implicit upper bound is named only to a value above it
        shown_max = self.max if self.max != INT_MAX or (is_int and value > self.max) else None
        bounds = (f" in {self.min if self.min is not None else -self.max}..{shown_max}" if shown_max is not None
                  else f" >= {self.min}" if self.min is not None else "")
        return None if ok else self.expectation(f"an integer{bounds}")


@dataclass(frozen=True, kw_only=True)
class Num(Spec):
    positive: bool = False   # > 0
    min: float | None = None  # >= min
    below: float | None = None  # < below
    max: float | None = None  # <= max

    def problem(self, value: Any) -> str | None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (not self.positive or value > 0) and (self.min is None or value >= self.min)
              and (self.below is None or value < self.below) and (self.max is None or value <= self.max))
        if self.min is not None and self.max is not None:
            what = f"a number in [{self.min:g}, {self.max:g}]"
        elif self.min is not None and self.below is not None:
            what = f"a number in [{self.min:g}, {self.below:g})"
        elif self.positive and self.below is not None:
            what = f"a number in (0, {self.below:g})"
        else:
            what = "a finite number" + (" > 0" if self.positive else f" >= {self.min:g}" if self.min is not None
                                        else f" < {self.below:g}" if self.below is not None else "")
        return None if ok else self.expectation(what)


@dataclass(frozen=True, kw_only=True)
class Bool(Spec):
    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else self.expectation("true or false")


@dataclass(frozen=True, kw_only=True)
class Str(Spec):
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    prefixes: tuple[str, ...] = ()  # also accepted: any string starting with one of these (e.g. "cuda:")

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str) or (self.nonempty and not value):
            return self.expectation("a non-empty string" if self.nonempty else "a string")
        if self.choices and value not in self.choices and not value.startswith(self.prefixes or ("\0",)):
            listed = ", ".join(self.choices) + "".join(f", {p}..." for p in self.prefixes)
            return self.expectation(f"one of {listed}")
        return None


@dataclass(frozen=True, kw_only=True)
class ListOf(Spec):
    item: Spec = field(default_factory=Spec)
    nonempty: bool = False
    unique: bool = False
    length: int | None = None

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, list) and (len(value) > 0 or not self.nonempty) and (
            self.length is None or len(value) == self.length)
        return None if ok else self.expectation(f"a list of {self.length}" if self.length is not None
                                                else "a non-empty list" if self.nonempty else "a list")

    def check_items(self, value: Any, where: str) -> None:
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]")
        if self.unique:
            seen: set[Any] = set()
            for i, item in enumerate(value):
                if item in seen:
                    raise SchemaError(f"{where}[{i}]", f"duplicate value {_shown(item)}")
                seen.add(item)


@dataclass(frozen=True, kw_only=True)
class MapOf(Spec):
    """An object with any string keys, each value of one spec."""

    value: Spec = field(default_factory=Spec)

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, dict) else self.expectation("an object")

    def check_items(self, value: Any, where: str) -> None:
        for key, item in value.items():
            self.value.check(item, f"{where}.{key}")


@dataclass(frozen=True, kw_only=True)
class Obj(Spec):
    """An object with known fields; ``required`` ones must be present, others are checked when present."""

    fields: dict[str, Spec] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, dict) else self.expectation("an object")

    def check_items(self, value: Any, where: str) -> None:
        for key in self.required:
            if key not in value:
                raise SchemaError(f"{where}.{key}" if where else key, "missing")
        for key, spec in self.fields.items():
            if key in value:
                spec.check(value[key], f"{where}.{key}" if where else key)


@dataclass(frozen=True, kw_only=True)
class Anything(Spec):
    def problem(self, value: Any) -> str | None:
        return None


# The settings a recipe is made of (training/recipes.py RecipeSettings), as ``--recipe-set`` /
# ``TrainOptions.recipe_overrides`` give them and as run.json's "recipe" records them.
RECIPE_SETTINGS = Obj(fields={
    "batch_size": Int(min=1),
    "epochs": Num(positive=True),
    "ema_decay": Num(min=0.0, below=1.0, nullable=True),
    "ema_warmup": Bool(),
    "label_smoothing": Num(min=0.0, below=1.0),
    "use_regularization_loss": Bool(),
    "tta": Str(choices=("none", "flip")),
    "nesterov": Bool(),
    "weight_decay": Num(min=0.0, nullable=True),
    "photometric": Bool(nullable=True),
    "crop_jitter": Int(min=0, nullable=True),
    "lr_boost": Num(positive=True),
    "warmup_epochs": Num(min=0.0, nullable=True),
})

OPTIONS = Obj(fields={
    "recipe": Str(choices=("original", "fast")),
    "epochs": Num(positive=True, nullable=True),
    "batch_size": Int(min=1, nullable=True),
    "lr": Num(positive=True, nullable=True),
    "lr_scale": Num(positive=True),
    "schedule": Str(nullable=True),
    "seed": Int(min=0, max=SEED_MAX),
    "device": Str(choices=("auto", "cpu", "cuda"), prefixes=("cuda:",)),
    "amp": Bool(nullable=True),
    "compile": Bool(),
    "step": Str(choices=("auto", "eager", "fused", "graph")),
    "eval_every": Int(min=0),
    "checkpoint_every": Int(min=1),
    "skip_nonfinite": Bool(),
    "early_stop": Int(min=1, nullable=True),
    "progress": Bool(),
    "log_every": Int(min=0, nullable=True),
    "recipe_overrides": Obj(fields=RECIPE_SETTINGS.fields, nullable=True),
})

# Images a run selected (data/identity.py): how many, a digest of their positions, one of their pixels and labels.
SELECTION = Obj(nullable=True, required=("images", "positions_sha256", "sha256"), fields={
    "images": Int(min=1), "positions_sha256": Str(nonempty=True), "sha256": Str(nonempty=True)})

DATA = Obj(fields={
    "source": Str(),
    "args": Obj(fields={
        "data": Str(nullable=True), "cache_dir": Str(nullable=True),
        "limit_train": Int(min=1, nullable=True), "limit_test": Int(min=1, nullable=True),
        "val_split": Int(min=0, nullable=True),
        # read options (cli/common.py DATA_OPTION_KEYS) that eval and --resume reuse, and the tree's val/ folder
        "dataset": Str(choices=("cifar10", "cifar100"), nullable=True),
        "labels": Str(choices=("fine", "coarse"), nullable=True),
        "resize": Str(choices=("none", "shorter-side"), nullable=True),
        "test_split": Num(positive=True, below=1.0, nullable=True),  # data/class_folders.py: a fraction
        "val_folder": Bool(),  # data/val_folder.py: DATA/val is the validation split
    }),
    "n_train": Int(min=1), "n_val": Int(min=0), "n_test": Int(min=0),
    "identity": Obj(nullable=True, required=("version", "source_train_images", "train"), fields={  # data/identity.py
        "version": Int(min=1), "source_train_images": Int(min=1), "source_per_class": ListOf(item=Int(min=0)),
        "train": SELECTION, "val": SELECTION, "test": SELECTION,
    }),
})

MODEL = Obj(fields={"name": Str(nonempty=True, nullable=True), "kwargs": MapOf(value=Anything()),
                    "cfg": Obj(nullable=True)})

# train --init-from: the weights a run started from (training/init_from.py)
INIT_FROM = Obj(required=("path", "kind", "sha256"), fields={
    "path": Str(nonempty=True), "kind": Str(choices=("run", "safetensors")), "sha256": Str(nonempty=True),
    "weights": Str(choices=("ema", "raw", "best")), "file": Str(nonempty=True), "step": Int(min=0),
    "model": Str(nonempty=True), "classes": ListOf(item=Str(nonempty=True), nonempty=True),
    "head": Str(choices=("kept", "re-made")),
})

RUN_SCHEMA = Obj(required=("files", "sha256", "model", "options", "data", "classes", "step", "ema_updates",
                           "images_seen", "train_time_s"), fields={
    "files": MapOf(value=Str(nonempty=True)),
    "sha256": MapOf(value=Str(nonempty=True)),
    "model": MODEL,
    "options": OPTIONS,
    "data": DATA,
    "classes": ListOf(item=Str(nonempty=True), nonempty=True, unique=True),
    "step": Int(min=0), "ema_updates": Int(min=0), "images_seen": Int(min=0),
    "train_time_s": Num(min=0.0),
    "epoch": Num(min=0.0),
    "epochs": Num(positive=True),
    "batch_size": Int(min=1), "steps_per_epoch": Int(min=1), "total_steps": Int(min=1), "world_size": Int(min=1),
    "best_accuracy": Num(min=0.0, max=1.0, nullable=True), "last_accuracy": Num(min=0.0, max=1.0, nullable=True),
    "skipped_steps": Int(min=0),
    "complete": Bool(),
    "stop_reason": Str(),
    "eval_split": Str(choices=("test", "val")),
    "temperature": Num(min=TEMPERATURE_RANGE[0], max=TEMPERATURE_RANGE[1]),
    "recipe": RECIPE_SETTINGS,
    "init_from": INIT_FROM,
    "best_step": Int(min=0, nullable=True), "evals_since_best": Int(min=0),
    # the loss sums of an epoch that a stop cut (training/loss_meter.py), continued by --resume
    "partial_epoch": Obj(nullable=True, required=("loss_sum", "steps", "mark_loss_sum", "mark_steps"), fields={
        "loss_sum": ListOf(item=Num(min=0.0), length=2), "steps": Int(min=0),  # losses are never negative
        "mark_loss_sum": ListOf(item=Num(min=0.0), length=2), "mark_steps": Int(min=0),
        "train_hits": Int(min=0), "train_seen": Int(min=0)}),  # the epoch's training accuracy so far
})


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value``'s objects and lists nest (a scalar: 0, ``{}``: 1), counted level by level without
    recursion, and no further than ``limit + 1``."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [item for c in containers for item in (c.values() if isinstance(c, dict) else c)]
    return depth


def validate_run_meta(meta: Any, source: str) -> None:
    """Raise a one-line :class:`CheckpointError` (``SOURCE: FIELD: expected ..., got ...``) if ``meta``
    does not fit :data:`RUN_SCHEMA`."""
    if nesting_depth(meta) > MAX_DEPTH:  # later comparisons and copies of such values recurse
        raise CheckpointError(f"{source}: objects and lists nested more than {MAX_DEPTH} levels deep; "
                              "was the file edited?")
    try:
        RUN_SCHEMA.check(meta, "")
    except SchemaError as exc:
        raise CheckpointError(f"{source}: {exc.where or 'run.json'}: {exc.message}; was the file edited?") from None
    problem = _inconsistency(meta)
    if problem:
        raise CheckpointError(f"{source}: {problem}; was the file edited?")


def _inconsistency(meta: dict[str, Any]) -> str | None:
    """What in ``meta`` contradicts another of its fields (each field alone fits the schema), else None: the
    counters --resume continues from must be those a training wrote."""
    step, spe = meta["step"], meta.get("steps_per_epoch")
    if meta.get("best_step") is not None and meta["best_step"] > step:
        return f"best_step {meta['best_step']} is after step {step}"
    if meta["ema_updates"] > step:
        return f"ema_updates {meta['ema_updates']} exceeds step {step}"
    skipped = meta.get("skipped_steps", 0)
    if "ema" in meta["files"] and meta["ema_updates"] != step - skipped:  # one update per step not skipped
        return f"ema_updates {meta['ema_updates']} is not step {step} less {skipped} skipped steps"
    best, last = meta.get("best_accuracy"), meta.get("last_accuracy")
    if best is not None and last is not None and best < last:
        return f"best_accuracy {best} is below last_accuracy {last}"
    part = meta.get("partial_epoch")
    if part is None:
        return None
    # At most one epoch's steps: not step % steps_per_epoch, because epochs differ in length when
    # cuda-convnet's methodology switches phase (phase 1 trains on fewer images than phase 2).
    into = min(step, spe) if spe else step
    if part["steps"] > into or part["mark_steps"] > part["steps"]:
        return (f"partial_epoch counts {part['steps']} steps ({part['mark_steps']} since the last record), "
                f"more than the {into} steps an epoch of this run can hold so far")
    if any(m > t for m, t in zip(part["mark_loss_sum"], part["loss_sum"])):
        return "partial_epoch.mark_loss_sum exceeds loss_sum"
    if part.get("train_hits", 0) > part.get("train_seen", 0) or (
            meta.get("batch_size") and part.get("train_seen", 0) > part["steps"] * meta["batch_size"]):
        return "partial_epoch.train_hits and train_seen do not fit the partial epoch's steps"
    return None
