"""``localconv train``: train a built-in or cfg-defined model into a run folder."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, LocalconvError
from ..metrics import format_accuracy
from .common import (DATA_OPTION_KEYS, add_data_args, add_device_arg, add_model_args, fit_model_to_classes, load_data,
                     model_from_args, non_negative_int, positive_float, positive_int)
from .train_options import (check_resume_data, check_resume_options, out_folder, recipe_setting, record_given,
                            seed_value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model; writes checkpoints, metrics.jsonl and run.json to --out")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", type=out_folder, required=True,
                   help="run folder: new, empty, or a run of localconv (other folders are refused)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--recipe", choices=("original", "fast"), default=None,
                   help="training procedure (default: original on CPU, fast on CUDA)")
    p.add_argument("--recipe-set", action="append", type=recipe_setting, default=None, metavar="KEY=VALUE",
                   help="replace one of the recipe's settings (repeatable), e.g. batch_size=128, ema_decay=null, "
                        "nesterov=false, weight_decay=null, label_smoothing=0; names and values: docs/speed.md")
    p.add_argument("--epochs", type=positive_float, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="minibatch size (default: the recipe's)")
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate (TF models, fast recipe)")
    p.add_argument("--lr-scale", type=positive_float, default=1.0, help="multiply every learning rate")
    p.add_argument("--schedule", default=None,
                   help='phases "EPOCHS:MULT,..." of learning-rate multipliers, e.g. "350:1,150:1,10:0.1,10:0.01"')
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seed of the initialization, the data order and the augmentation")
    add_device_arg(p)
    p.add_argument("--limit-train", type=positive_int, default=None, help="train on N images only")
    p.add_argument("--limit-test", type=positive_int, default=None, help="evaluate on N test images only")
    p.add_argument("--val-split", type=non_negative_int, default=0,
                   help="hold out N training images for validation (evaluated instead of test during training)")
    p.add_argument("--eval-every", type=non_negative_int, default=1, help="epochs between evaluations")
    p.add_argument("--checkpoint-every", type=positive_int, default=1, help="epochs between checkpoints")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for the fast recipe on CUDA and on CPUs with native bf16, AMX or "
                        "AVX512-BF16; the original recipe runs in float32 on every device unless --amp is given; "
                        "run.json records it)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--step", choices=("auto", "eager", "fused", "graph"), default="auto",
                   help="how a training step runs: eager (checks every loss before the update; needed by --watch, "
                        "--tensorboard, --skip-nonfinite and torchrun), fused (device-side step, no host "
                        "synchronization), graph (fused, captured as one CUDA graph); auto: eager on every "
                        "device (fused and graph are opt-in until their GPU parity is checked)")
    p.add_argument("--holdout", choices=("auto", "none"), default="auto",
                   help="auto: cfg models under the original recipe follow cuda-convnet's methodology (phase 1 "
                        "of the schedule trains without batch 5, or a seeded stand-in of a fifth of each class, "
                        "and is validated on it; later phases train on all images); none: all images throughout")
    p.add_argument("--skip-nonfinite", action="store_true", help="skip batches whose loss is NaN/Inf")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    diag = p.add_argument_group("diagnosis (see docs/diagnosis.md)")
    diag.add_argument("--watch", action="store_true",
                      help="run the doctor's per-layer checks during training; warn once per problem")
    diag.add_argument("--watch-every", type=positive_int, default=50, help="steps between --watch checks")
    diag.add_argument("--stop-on-problem", action="store_true",
                      help="stop (with a checkpoint) at the first problem --watch finds; implies --watch")
    diag.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                      help="write TensorBoard scalars and histograms (to DIR, default the run folder)")
    diag.add_argument("--tb-every", type=positive_int, default=None,
                      help="steps between TensorBoard writes (default: 100, fewer in a short run so that it "
                           "still gets about 20 points)")
    p.set_defaults(func=run)
    record_given(p)  # last: --resume refuses exactly the options typed (train_options.py)


def diagnostic_callbacks(args: argparse.Namespace, out: Path) -> list[Any]:
    """The --watch / --tensorboard callbacks (never stored in the run: they change nothing in it)."""
    callbacks: list[Any] = []
    if args.watch or args.stop_on_problem:
        from ..diagnostics.watch import WatchCallback

        callbacks.append(WatchCallback(every=args.watch_every, stop_on_problem=args.stop_on_problem))
    if args.tensorboard is not None:
        from ..reports.tensorboard import TensorBoardCallback

        callbacks.append(TensorBoardCallback(Path(args.tensorboard) if args.tensorboard else out,
                                             every=args.tb_every))
    return callbacks


OPTION_KEYS = ("recipe", "epochs", "batch_size", "lr", "lr_scale", "schedule", "seed", "device", "amp", "compile",
               "step", "eval_every", "checkpoint_every", "skip_nonfinite", "holdout")
DATA_KEYS = ("data", "cache_dir", "limit_train", "limit_test", "val_split", *DATA_OPTION_KEYS)


def _resume_args(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], Any, dict[str, Any]]:
    """Options, data arguments, model and run.json of the run being resumed; options given on the command line
    are applied or refused as train_options.py says."""
    from ..models.registry import build_model_from_spec
    from ..training.checkpoint import read_meta

    meta = read_meta(args.out)
    check_resume_options(args, meta)
    options = dict(meta["options"])
    if args.epochs is not None:  # allow extending a finished run
        options["epochs"] = args.epochs
    options["progress"] = not args.no_progress
    if args.device != "auto":
        options["device"] = args.device
    if args.step != "auto":  # how steps run does not change what they compute
        options["step"] = args.step
    for key in ("compile", "eval_every", "checkpoint_every"):  # speed, or what is logged and when
        if key in getattr(args, "_given", ()):
            options[key] = getattr(args, key)
    data_args = dict(meta["data"].get("args", {}))
    if args.data:
        data_args["data"] = str(Path(args.data).resolve())
    if args.cache_dir:
        data_args["cache_dir"] = str(Path(args.cache_dir).resolve())
    if args.model or args.cfg:  # the run's own model is resumed: a different one given here is a mistake
        from ..models.registry import model_spec

        if _model_identity(model_spec(model_from_args(args))) != _model_identity(meta["model"]):
            raise CheckpointError(f"{args.out}: --resume continues the run's own model "
                                  f"({meta['model'].get('name') or 'a cfg model'}), not the one given with "
                                  "--model/--cfg; omit them, or choose another --out for a new run")
    return options, data_args, build_model_from_spec(meta["model"]), meta


def _model_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What defines a model in a spec (a cfg model's file names do not, nor the class count: it follows the
    data, which check_resume_data compares)."""
    cfg = spec.get("cfg")
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k not in ("layers_name", "params_name", "num_classes")}
    kwargs = spec.get("kwargs", {})
    if isinstance(kwargs, dict):
        kwargs = {k: v for k, v in kwargs.items() if k != "num_classes"}
    return {"name": spec.get("name"), "kwargs": kwargs, "cfg": cfg}


def run(args: argparse.Namespace) -> int:
    from ..data.loader import select_splits
    from ..training.checkpoint import RUN_FILE
    from ..training.engine import TrainOptions

    from ..training.run_folder import RunFolder

    out: Path = args.out
    if args.tensorboard is not None:  # optional dependencies are checked before anything is created
        from ..optional_deps import require

        require("torch.utils.tensorboard", "--tensorboard", "tensorboard")
    # refuses a file, or a folder that is not a run, before any work (run_folder.py); under torchrun only rank 0
    # creates, locks and cleans up the folder
    folder = RunFolder(out, lock=int(os.environ.get("RANK", "0")) == 0)
    resume = bool(args.resume and folder.state == "run")
    if folder.state == "run" and not args.resume:
        raise LocalconvError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    committed = (out / RUN_FILE).read_bytes() if resume else None  # must be unchanged once the folder is locked
    meta: dict[str, Any] | None = None
    if resume:
        options_d, data_args, model, meta = _resume_args(args)
        names = {f.name for f in fields(TrainOptions)}
        try:
            options = TrainOptions(**{k: v for k, v in options_d.items() if k in names})
            options.validate()
        except (TypeError, ValueError) as exc:  # a hand-edited run.json
            raise CheckpointError(f"{out / RUN_FILE}: field 'options' is malformed ({exc})") from None
    else:
        import torch

        torch.manual_seed(args.seed)  # the initial weights, too, follow --seed: the same command, the same run
        model = model_from_args(args)
        data_args = {k: (str(Path(getattr(args, k)).resolve()) if k in ("data", "cache_dir") and getattr(args, k)
                         else getattr(args, k)) for k in DATA_KEYS}
        recipe = args.recipe
        if recipe is None:
            from ..training.engine import resolve_device

            recipe = "fast" if resolve_device(args.device).type == "cuda" else "original"
        options = TrainOptions(**{k: getattr(args, k) for k in OPTION_KEYS if k != "recipe"}, recipe=recipe,
                               progress=not args.no_progress,
                               recipe_overrides=dict(args.recipe_set) if args.recipe_set else None)
    options.validate()
    data = load_data(data_args.get("data"), Path(data_args["cache_dir"]) if data_args.get("cache_dir") else None,
                     progress=options.progress, options=data_args)
    splits = select_splits(data.train_images, data.train_labels, data.test_images, data.test_labels,
                           limit_train=data_args.get("limit_train"), val_split=data_args.get("val_split") or 0,
                           limit_test=data_args.get("limit_test"))
    info = {"source": data.source, "args": data_args, "n_train": int(splits.train_labels.numel()),
            "n_val": int(splits.val_labels.numel()) if splits.val_labels is not None else 0,
            "n_test": int(splits.test_labels.numel())}
    if meta is not None:
        check_resume_data(out, meta, list(data.classes), info["n_train"])
    else:  # built-in heads follow the data's class count; a cfg file's must match it
        fit_model_to_classes(model, list(data.classes))
    from ..training import distributed as ddp

    dist_ctx = ddp.from_environment(options.device)
    callbacks = diagnostic_callbacks(args, out) if dist_ctx is None or dist_ctx.is_main else []
    try:
        return _fit(model, splits, (folder, committed), options, info, list(data.classes), resume, dist_ctx,
                    callbacks)
    finally:
        for cb in callbacks:
            if hasattr(cb, "close"):
                cb.close()
        ddp.shutdown(dist_ctx)


def _fit(model, splits, where, options, info, classes, resume, dist_ctx, callbacks=()) -> int:  # noqa: ANN001
    from ..training.engine import Trainer

    folder, committed = where
    out = folder.out
    trainer = Trainer(model, splits, out, options, data_info=info, classes=classes, resume=resume,
                      dist_ctx=dist_ctx, callbacks=callbacks)
    if not trainer.is_main:
        options.progress = False
    if trainer.is_main:  # every check has passed: now the folder is created and locked
        folder.open(expect_run_json=committed)
    say = (lambda msg: print(msg, file=sys.stderr)) if trainer.is_main else (lambda msg: None)  # noqa: E731
    world = f" x {dist_ctx.world_size} processes" if dist_ctx else ""
    try:  # from here on, every way out releases the lock (and cleans up a run that never checkpointed)
        say(f"training {info['n_train']} images, {trainer.epochs:g} epochs = {trainer.total_steps} steps of "
            f"{trainer.batch_size} ({options.recipe} recipe, {'bf16 autocast' if trainer.amp else 'float32'}) on "
            f"{trainer.device}{world}; run folder {out}")
        if trainer.methodology_text():
            say(trainer.methodology_text())
        state = trainer.fit()
    except BaseException:
        if trainer.is_main:
            folder.close(failed=True)  # without a committed checkpoint, removes what this run created
        raise
    if trainer.is_main:
        folder.close(failed=False)
    if trainer.stop_reason == "interrupted":
        say(f"interrupted: checkpoint written at step {state.step}; continue with "
            f"`localconv train --resume --out {out}`")
        return 130
    if trainer.stop_reason.startswith("problem"):
        say(f"stopped at step {state.step} ({trainer.stop_reason}, --stop-on-problem); checkpoint written")
        return 1
    acc = state.last_accuracy
    say(f"done: step {state.step}, {trainer.splits.eval_split} accuracy {format_accuracy(acc)}" if acc is not None
        else f"done: step {state.step}")
    return 0
