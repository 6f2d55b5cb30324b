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
    max: int | None = None

    def problem(self, value: Any) -> str | None:
        bounds = (f" in {self.min}..{self.max}" if self.min is not None and self.max is not None
                  else f" >= {self.min}" if self.min is not None else "")
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and (self.min is None or value >= self.min) and (self.max is None or value <= self.max))
        return None if ok else self.expectation(f"an integer{bounds}")


@dataclass(frozen=True, kw_only=True)
class Num(Spec):
    positive: bool = False   # > 0
    min: float | None = None  # >= min
    below: float | None = None  # < below

    def problem(self, value: Any) -> str | None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (not self.positive or value > 0) and (self.min is None or value >= self.min)
              and (self.below is None or value < self.below))
        if self.min is not None and self.below is not None:
            what = f"a number in [{self.min:g}, {self.below:g})"
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

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, list) and (len(value) > 0 or not self.nonempty)
        return None if ok else self.expectation("a non-empty list" if self.nonempty else "a list")

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
    "progress": Bool(),
    "log_every": Int(min=0, nullable=True),
    "recipe_overrides": Obj(fields=RECIPE_SETTINGS.fields, nullable=True),
})

DATA = Obj(fields={
    "source": Str(),
    "args": Obj(fields={
        "data": Str(nullable=True), "cache_dir": Str(nullable=True),
        "limit_train": Int(min=1, nullable=True), "limit_test": Int(min=1, nullable=True),
        "val_split": Int(min=0, nullable=True),
    }),
    "n_train": Int(min=1), "n_val": Int(min=0), "n_test": Int(min=0),
})

MODEL = Obj(fields={"name": Str(nonempty=True, nullable=True), "kwargs": MapOf(value=Anything()),
                    "cfg": Obj(nullable=True)})

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
    "best_accuracy": Num(min=0.0, nullable=True), "last_accuracy": Num(min=0.0, nullable=True),
    "skipped_steps": Int(min=0),
    "complete": Bool(),
    "stop_reason": Str(),
    "eval_split": Str(choices=("test", "val")),
    "temperature": Num(positive=True),
    "recipe": RECIPE_SETTINGS,
})


def validate_run_meta(meta: Any, source: str) -> None:
    """Raise a one-line :class:`CheckpointError` (``SOURCE: FIELD: expected ..., got ...``) if ``meta``
    does not fit :data:`RUN_SCHEMA`."""
    try:
        RUN_SCHEMA.check(meta, "")
    except SchemaError as exc:
        raise CheckpointError(f"{source}: {exc.where or 'run.json'}: {exc.message}; was the file edited?") from None
