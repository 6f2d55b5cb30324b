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
                     model_from_args, non_negative_int, plural, positive_float, positive_int, resolved_path)
from .train_options import (check_resume_data, check_resume_options, out_folder, recipe_setting, record_given,
                            seed_value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model; writes checkpoints, metrics.jsonl and run.json to --out")
    add_model_args(p)
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                   help="input channels of a tf-tutorial model: 3 (RGB, default) or 1 (the images' luma; for "
                        "grayscale data, which is read as RGB with three equal channels)")
    add_data_args(p)
    p.add_argument("--out", type=out_folder, required=True,
                   help="run folder: new, empty, or a run of localconv (other folders are refused)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--init-from", type=Path, default=None, metavar="RUN",
                   help="start from the weights of a run folder (its averaged weights) or a .safetensors file; "
                        "the model is the run's unless --model/--cfg is given; the classifier is re-made when "
                        "the classes differ; run.json records the source (init_from)")
    p.add_argument("--recipe", choices=("original", "fast"), default=None,
                   help="training procedure (default: original on CPU, fast on CUDA)")
    p.add_argument("--recipe-set", action="append", type=recipe_setting, default=None, metavar="KEY=VALUE",
                   help="replace one of the recipe's settings (repeatable), e.g. batch_size=128, ema_decay=null, "
                        "nesterov=false, weight_decay=null, label_smoothing=0; names and values: docs/speed.md")
    p.add_argument("--epochs", type=positive_float, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="minibatch size (default: the recipe's)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="base learning rate of the TF models, under either recipe (default: the recipe's; cfg "
                        "models take theirs from the params file: use --lr-scale)")
    p.add_argument("--lr-scale", type=positive_float, default=1.0, help="multiply every learning rate")
    p.add_argument("--schedule", default=None,
                   help='phases "EPOCHS:MULT,..." of learning-rate multipliers, e.g. "350:1,150:1,10:0.1,10:0.01"')
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seed of the initialization, the data order and the augmentation")
    add_device_arg(p)
    p.add_argument("--limit-train", type=positive_int, default=None,
                   help="train on N images only: a random subset drawn with a fixed seed (not --seed), so every "
                        "run with the same N and --val-split trains on the same images")
    p.add_argument("--limit-test", type=positive_int, default=None, help="evaluate on N test images only")
    p.add_argument("--val-split", type=non_negative_int, default=0,
                   help="hold out N training images for validation (evaluated instead of test during training)")
    p.add_argument("--eval-every", type=non_negative_int, default=1, help="epochs between evaluations")
    p.add_argument("--checkpoint-every", type=positive_int, default=1, help="epochs between checkpoints")
    p.add_argument("--early-stop", type=positive_int, default=None, metavar="N",
                   help="stop after N evaluations without a better accuracy on the evaluation split (the best "
                        "weights are always kept: `localconv eval RUN --weights best`)")
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
    p.add_argument("--nproc-per-node", type=positive_int, default=None, metavar="G",
                   help="train with G processes on this machine (DistributedDataParallel, one per GPU), started "
                        "as `torchrun --standalone --nproc_per_node=G` would; the inputs are checked first, and "
                        "an input error ends with one line and exit 2 (README: Distributed training)")
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
               "step", "eval_every", "checkpoint_every", "skip_nonfinite", "holdout", "early_stop")
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
        data_args["data"] = resolved_path(args.data, "--data")
    if args.cache_dir:
        data_args["cache_dir"] = resolved_path(args.cache_dir, "--cache-dir")
    if args.model or args.cfg:  # the run's own model is resumed: a different one given here is a mistake
        from ..models.registry import model_spec

        if _model_identity(model_spec(model_from_args(args))) != _model_identity(meta["model"]):
            raise CheckpointError(f"{args.out}: --resume continues the run's own model "
                                  f"({meta['model'].get('name') or 'a cfg model'}), not the one given with "
                                  "--model/--cfg; omit them, or choose another --out for a new run")
    return options, data_args, build_model_from_spec(meta["model"]), meta


def _say_channels(data: Any, model: Any) -> None:
    """Grayscale data: the first line says how it is read (as RGB, three equal channels, unless --in-chans 1)."""
    from ..data.channels import equal_channels

    if int(os.environ.get("RANK", "0")) != 0:
        return
    if not equal_channels(data.train_images):
        if getattr(model, "in_chans", 3) == 1:  # colour images, one channel (--in-chans 1, or an --init-from run's)
            print("note: the model takes one channel: colour images are read as their luma", file=sys.stderr)
        return
    if getattr(model, "in_chans", 3) == 1:
        print("note: grayscale images, read as one channel (--in-chans 1)", file=sys.stderr)
    else:
        print("note: grayscale images, read as RGB (three equal channels); --in-chans 1 (tf-tutorial models) "
              "trains on one", file=sys.stderr)


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
    out: Path = args.out
    if args.nproc_per_node is not None:  # the launcher (None: this is one of its workers)
        from .launch import run_or_launch

        code = run_or_launch(args)
        if code is not None:
            return code
    from .stop_signals import TrainSignals

    with TrainSignals() as signals:  # a signal before training: one line (stop_signals.py)
        return _train(args, out, signals)


def _train(args: argparse.Namespace, out: Path, signals: Any) -> int:
    """The train command in this process (one of the launcher's workers, or the whole run)."""
    from ..data.loader import select_splits
    from ..training.checkpoint import RUN_FILE
    from ..training.engine import TrainOptions
    from ..training.run_folder import RunFolder

    if args.tensorboard is not None:  # optional dependencies are checked before anything is created
        from ..optional_deps import require

        require("torch.utils.tensorboard", "--tensorboard", "tensorboard")
        if args.tensorboard:  # its own folder (the run folder's is checked when it is taken)
            from ..reports.tensorboard import check_log_dir

            check_log_dir(args.tensorboard)
    # refuses a file, or a folder that is not a run, before any work (run_folder.py); under torchrun only rank 0
    # creates, locks and cleans up the folder
    folder = RunFolder(out, lock=int(os.environ.get("RANK", "0")) == 0)
    resume = bool(args.resume and folder.state == "run")
    if folder.state == "run" and not args.resume:
        raise LocalconvError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    committed = (out / RUN_FILE).read_bytes() if resume else None  # must be unchanged once the folder is locked
    meta: dict[str, Any] | None = None
    init_from: dict[str, Any] | None = None  # what --init-from loaded (run.json "init_from")
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
        if args.init_from is not None:
            from ..training.init_from import load_state_into, model_from_source, read_source

            weights, init_from, source = read_source(args.init_from)
            model = model_from_args(args) if args.model or args.cfg else model_from_source(args.init_from, source, args)
            load_state_into(model, weights, init_from)
        else:
            model = model_from_args(args)
        data_args = {k: (resolved_path(getattr(args, k), f"--{k.replace('_', '-')}") if k in ("data", "cache_dir")
                         and getattr(args, k)
                         else getattr(args, k)) for k in DATA_KEYS}
        recipe = args.recipe
        if recipe is None:
            from ..training.engine import resolve_device

            recipe = "fast" if resolve_device(args.device).type == "cuda" else "original"
        options = TrainOptions(**{k: getattr(args, k) for k in OPTION_KEYS if k != "recipe"}, recipe=recipe,
                               progress=not args.no_progress,
                               recipe_overrides=dict(args.recipe_set) if args.recipe_set else None)
    options.validate()
    from ..training.plain_progress import stderr_is_terminal

    data = load_data(data_args.get("data"), Path(data_args["cache_dir"]) if data_args.get("cache_dir") else None,
                     progress=options.progress and stderr_is_terminal(), options=data_args)  # no bar frames in a log
    _say_channels(data, model)
    from ..data.class_folders import DEFAULT_TEST_FRACTION, DESCRIPTION as CLASS_FOLDERS

    if data.source.startswith(CLASS_FOLDERS) and data_args.get("test_split") is None:
        data_args["test_split"] = DEFAULT_TEST_FRACTION  # recorded: eval draws the same test images
    if data.source.startswith(CLASS_FOLDERS) and int(os.environ.get("RANK", "0")) == 0:
        # which images are the test split, and how many: small classes hold out at least one (more than the fraction)
        held, total = len(data.test_labels), len(data.test_labels) + len(data.train_labels)
        print(f"data: {data.source}; {held} of {total} images held out", file=sys.stderr)
    from ..data.channels import data_with_channels

    data = data_with_channels(data, getattr(model, "in_chans", 3))
    splits = select_splits(data.train_images, data.train_labels, data.test_images, data.test_labels,
                           limit_train=data_args.get("limit_train"), val_split=data_args.get("val_split") or 0,
                           limit_test=data_args.get("limit_test"))
    from ..data.val_folder import attach_val_folder

    val_note = attach_val_folder(splits, data_args.get("data"), list(data.classes), data_args.get("resize"),
                                 data_args.get("val_split") or 0, getattr(model, "in_chans", 3),
                                 data_args.get("limit_test"), data_args.get("cache_dir"))
    if val_note:
        data_args["val_folder"] = True  # DATA/val is the validation split: eval --split val reads it again
        if int(os.environ.get("RANK", "0")) == 0:
            print(val_note, file=sys.stderr)
    info = {"source": data.source, "args": data_args, "n_train": int(splits.train_labels.numel()),
            "n_val": int(splits.val_labels.numel()) if splits.val_labels is not None else 0,
            "n_test": int(splits.test_labels.numel())}
    from ..data.identity import check_identity, identity_record

    selection = (data_args.get("val_split") or 0, data_args.get("limit_train"))
    info["identity"] = identity_record(data, *selection)  # what later uses check (data/identity.py)
    if val_note:  # the tree's val/ folder is the validation split: its images are recorded, not a drawn selection
        from ..data.identity import with_val_folder

        info["identity"] = with_val_folder(info["identity"], splits.val_images.numpy(), splits.val_labels.numpy())
    if meta is not None:
        check_resume_data(out, meta, list(data.classes), info["n_train"])
        # the same images, not only as many (a moved copy of the same data passes: pixels, not paths, are hashed)
        checked = check_identity(meta["data"].get("identity"), data, ("train", "val"), *selection,
                                 shown=f"--data {data_args.get('data') or data.source}", current=info["identity"],
                                 consequence="--resume continues the run on its own data; give the run's data, or "
                                             "start a new run with another --out")
        if checked is None and int(os.environ.get("RANK", "0")) == 0:  # said, not silent: nothing was compared
            print(f"note: {out} records no digest of its images (a run of an older localconv); the data cannot be "
                  "checked to be the run's, and its digest is recorded from now on", file=sys.stderr)
    if meta is None:  # built-in heads follow the data's class count; a cfg file's must match it
        if init_from is not None:  # the source's head is kept only for the same classes
            init_from["head"] = remake_head_for(model, init_from, list(data.classes))
        fit_model_to_classes(model, list(data.classes))
    from ..training import distributed as ddp

    dist_ctx = ddp.from_environment(options.device)
    callbacks = diagnostic_callbacks(args, out) if dist_ctx is None or dist_ctx.is_main else []
    try:
        return _fit(model, splits, (folder, committed), options, info, list(data.classes), resume, dist_ctx,
                    callbacks, init_from, signals)
    except RuntimeError as exc:  # a peer killed, stopped or hung: one line, not gloo's traceback
        failure = ddp.as_collective_failure(exc, dist_ctx)
        if failure is None:
            raise
        raise type(failure)(f"{failure}; the last checkpoint in {out} is kept: continue with "
                            f"{_launcher_resume(out)}") from None
    finally:
        for cb in callbacks:
            if hasattr(cb, "close"):
                cb.close()
        ddp.shutdown(dist_ctx)


def _launcher_resume(out: Path) -> str:
    """How a multi-process run continues: the launcher's command, or torchrun's own with --resume."""
    from .launch import resume_command, started_by_launcher

    return resume_command(out) if started_by_launcher() else "the same torchrun command and --resume"


def remake_head_for(model: Any, init_from: dict[str, Any], classes: list[str]) -> str:
    """'kept' when the --init-from source's classifier serves ``classes`` (the same count, and the same names
    where the source names them), else 're-made' (a fresh head, ``reset_classifier``)."""
    named = init_from.get("classes")
    if model.num_classes == len(classes) and (named is None or list(named) == list(classes)):
        return "kept"
    if getattr(model, "model_name", None) or model.num_classes == len(classes):
        model.reset_classifier(len(classes))  # a cfg file's head of another count is refused by fit_model_to_classes
    return "re-made"


def _fit(model, splits, where, options, info, classes, resume, dist_ctx, callbacks=(),  # noqa: ANN001
         init_from=None, signals=None) -> int:  # noqa: ANN001
    from ..training.engine import Trainer

    folder, committed = where
    out = folder.out
    trainer = Trainer(model, splits, out, options, data_info=info, classes=classes, resume=resume,
                      dist_ctx=dist_ctx, callbacks=callbacks)
    if init_from is not None:
        trainer.init_from = init_from
    if not trainer.is_main:
        options.progress = False
    if trainer.is_main:  # every check has passed: now the folder is created and locked
        folder.open(expect_run_json=committed)
    say = (lambda msg: print(msg, file=sys.stderr)) if trainer.is_main else (lambda msg: None)  # noqa: E731
    world = f" x {dist_ctx.world_size} processes" if dist_ctx else ""
    try:  # from here on, every way out releases the lock (and cleans up a run that never checkpointed)
        if init_from is not None:
            step = f", step {init_from['step']}" if "step" in init_from else ""
            say(f"starting from the weights of {init_from['path']} ({init_from.get('weights', 'file')}{step}); "
                f"classifier {init_from['head']}")
        if resume:
            say(f"resuming from step {trainer.state.step} (epoch {trainer.clock.epoch_at(trainer.state.step):g})")
            before, now = trainer.resumed_world_size, dist_ctx.world_size if dist_ctx else 1
            if before != now:  # allowed, but no longer exact
                say(f"note: the run was trained by {before} process{'es' if before > 1 else ''} and continues with "
                    f"{now}: the global batch stays {trainer.batch_size}, but each process draws the order of its "
                    f"own shard of the images, so the run will not end with the weights of an uninterrupted "
                    f"{before}-process run (an exact resume needs the same number of processes)")
        say(f"training {info['n_train']} images, {plural(trainer.epochs, 'epoch')} = "
            f"{plural(trainer.total_steps, 'step')} of {trainer.batch_size} ({options.recipe} recipe, "
            f"{'bf16 autocast' if trainer.amp else 'float32'}) on "
            f"{trainer.device}{world}; run folder {out}")
        if trainer.methodology_text():
            say(trainer.methodology_text())
        if signals is not None:  # from here on a signal asks the trainer for a checkpoint (or, after its loop,
            signals.hand_to(trainer.handle_signal)  # is ignored), never the default action: stop_signals.py
        state = trainer.fit()
    except BaseException:
        if trainer.is_main:
            folder.close(failed=True)  # without a committed checkpoint, removes what this run created
        raise
    if trainer.is_main:
        folder.close(failed=False)
    if trainer.stop_reason in ("interrupted", "terminated"):  # Ctrl-C, SIGTERM: exit 128 + the signal's number
        say(f"{trainer.stop_reason}{' (SIGTERM)' if trainer.stop_reason == 'terminated' else ''}: checkpoint written "
            f"at step {state.step}; continue with " + (_launcher_resume(out) if dist_ctx else
                                                       f"`localconv train --resume --out {out}`"))
        return 130 if trainer.stop_reason == "interrupted" else 143
    if trainer.stop_reason.startswith("problem"):
        say(f"stopped at step {state.step} ({trainer.stop_reason}, --stop-on-problem); checkpoint written")
        return 1
    if trainer.stop_reason.startswith("early stop"):
        say(f"stopped at step {state.step}: {trainer.stop_reason}; its weights: `localconv eval {out} --weights best`")
    acc = state.last_accuracy
    say(f"done: step {state.step}, {trainer.splits.eval_split} accuracy {format_accuracy(acc)}" if acc is not None
        else f"done: step {state.step}")
    return 0
