"""``localconv doctor``: train briefly while watching every layer, then name what is wrong.

Exit code 0 when healthy, 1 when a problem was found, 2 on bad input. ``--model``/``--cfg`` run a
built-in or cuda-convnet model with its recipe; ``--module FILE.py:FACTORY`` runs the user's own model
through :func:`localconv.diagnose` (the file is executed as Python code).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import LocalconvError
from .common import (add_data_args, add_device_arg, add_model_args, check_model_choice, data_options,
                     fit_model_to_classes, model_from_args, non_negative_int, positive_float, positive_int)
from .train_options import seed_value


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..diagnostics.options import DoctorOptions

    d = DoctorOptions()
    p = sub.add_parser(
        "doctor", help="train briefly while watching every layer; report problems (exit 1) or healthy (exit 0)",
        description="Train a few hundred steps on a subset of the data with the model's own learning parameters, "
                    "watching every layer (activations, dead units, gradients, update sizes), then print a verdict: "
                    "each problem with its layer, a plain-language cause and a fix. Exit code 0: healthy, 1: "
                    "problems found, 2: bad input.")
    add_model_args(p, required=False)
    p.add_argument("--module", metavar="FILE.py:FACTORY",
                   help="your own model: FACTORY(num_classes) in FILE.py (or package.module:FACTORY) returns an "
                        "nn.Module or (model, optimizer); the file is executed as Python code, so give only files "
                        "you trust. It gets float images [N, 3, 32, 32] standardized per channel")
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--steps", type=positive_int, default=d.steps, help="training steps to watch")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="minibatch size")
    p.add_argument("--limit-train", type=positive_int, default=d.limit_train, help="training images used")
    p.add_argument("--val-images", type=non_negative_int, default=d.val_images,
                   help="training images held out to report an accuracy (at most a fifth of the images)")
    p.add_argument("--every", type=positive_int, default=d.every, help="record layer statistics every N steps")
    p.add_argument("--recipe", choices=("original", "fast"), default=d.recipe,
                   help="training procedure whose learning parameters are checked")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="base learning rate (TF models, fast recipe; --module: the default SGD's, 0.01)")
    p.add_argument("--lr-scale", type=positive_float, default=1.0, help="multiply every learning rate")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the initialization and of the data order")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads for the run (default: one per core that other processes leave idle, "
                        "measured while the data loads; at least 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..diagnostics.options import DoctorOptions

    options = DoctorOptions(steps=args.steps, batch_size=args.batch_size, limit_train=args.limit_train,
                            val_images=args.val_images, every=args.every, recipe=args.recipe, lr=args.lr,
                            lr_scale=args.lr_scale, seed=args.seed, device=args.device, threads=args.threads or 0,
                            progress=args.progress)
    options.validate()  # usage errors first: they answer before torch is imported
    if args.module:
        if args.model or args.cfg:
            raise LocalconvError("give one of --model, --cfg or --module")
        from ..diagnostics.user_module import split_spec

        split_spec(args.module)
        return run_module(args, options)
    check_model_choice(args)
    import torch

    from ..data import load_training_subset
    from ..diagnostics.doctor import doctor_images
    from .doctor_recipe import run_doctor
    from ..diagnostics.idle_cores import IdleCores

    idle = IdleCores()  # measured while the data loads: how busy the other processes keep the machine
    torch.manual_seed(args.seed)
    model = model_from_args(args)
    # only the ~6,000 images the run uses are decoded on a cold cache (a warm one is used as it is)
    read = data_options(args)
    data = load_training_subset(lambda n: doctor_images(n, options), args.data, args.cache_dir,
                                progress=args.progress, labels=read["labels"], resize=read["resize"] or "none",
                                dataset=read["dataset"] or "cifar10")
    fit_model_to_classes(model, data.classes)  # the head follows the data's class count, as in train
    if not options.threads:
        options.threads = idle.threads(torch.get_num_threads())
    report = run_doctor(model, data.images, data.labels, options, classes=data.classes, subset_of=data.total)
    add_flag_fixes(report.findings, args)
    return print_report(report, args)


def add_flag_fixes(findings: list[Any], args: argparse.Namespace) -> None:
    """The fix as the option that applies it: ``--conv2-std 0.028`` or ``--no-softmax-output`` (TF models), or the
    cfg file's initW."""
    tf_model = bool(args.model) and args.model.replace("_", "-").startswith("tf-tutorial")
    for f in findings:
        if f.kind == "softmax_before_loss" and tf_model:  # the tf-tutorial family's softmax is an option
            f.fix += " With localconv: --no-softmax-output."
            continue
        if f.std is None or not f.layer:
            continue
        flag = f"--{f.layer}-std"
        if tf_model and f.layer in ("conv1", "conv2"):
            f.fix += f" With localconv: {flag} {f.std:.2g}."
        elif args.cfg:
            f.fix += f" In {args.cfg}: initW={f.std:.2g} in [{f.layer}]."


def standardized(images: Any) -> Any:
    """uint8 NCHW images as float32, standardized per channel with their own mean and std."""
    import torch

    x = torch.as_tensor(images).float()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


def run_module(args: argparse.Namespace, options: Any) -> int:
    """``--module``: the user's model and (optional) optimizer under :func:`localconv.diagnose`."""
    import torch

    from ..data import load_training_subset
    from ..diagnostics.diagnose import DEFAULT_MOMENTUM, diagnose
    from ..diagnostics.doctor import cpu_threads, doctor_images
    from ..diagnostics.idle_cores import IdleCores
    from ..diagnostics.user_module import build_user_model, load_factory

    factory = load_factory(args.module)  # the user's file first: its errors come before reading the data
    idle = IdleCores()
    read = data_options(args)
    data = load_training_subset(lambda n: doctor_images(n, options), args.data, args.cache_dir,
                                progress=args.progress, labels=read["labels"], resize=read["resize"] or "none",
                                dataset=read["dataset"] or "cifar10")
    torch.manual_seed(args.seed)
    model, optimizer = build_user_model(args.module, len(data.classes), factory)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr or 0.01, momentum=DEFAULT_MOMENTUM)
    device = ("cuda" if torch.cuda.is_available() else None) if args.device == "auto" else args.device
    threads = options.threads or idle.threads(torch.get_num_threads())
    x, y = standardized(data.images), torch.as_tensor(data.labels, dtype=torch.long)
    with cpu_threads(threads):
        report = diagnose(model, (x, y), optimizer=optimizer, steps=options.steps, device=device,
                          batch_size=options.batch_size, every=options.every, seed=args.seed,
                          name=args.module)
    return print_report(report, args)


def print_report(report: Any, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(report.to_dict(), allow_nan=False))
    else:
        print(report.format())
    return report.exit_code
