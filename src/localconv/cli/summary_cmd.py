"""``localconv summary``: per-layer output shapes, parameters and multiply-adds of a model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import LocalconvError
from .common import add_model_args, check_model_choice, model_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="per-layer table: output shape, parameters, multiply-adds",
                       description="Per-layer output shape, parameters and multiply-adds (per image, forward) "
                                   "of a built-in model (--model), a cuda-convnet layer file (--cfg; --params "
                                   "is optional here: the structure does not depend on it) or a trained run "
                                   "(RUN: its model as run.json describes it, with its class count).")
    p.add_argument("run", nargs="?", type=Path, default=None,
                   help="a run folder written by `localconv train` (instead of --model or --cfg)")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.run is not None:
        if args.model or args.cfg:
            raise LocalconvError("give a run folder or --model/--cfg, not both")
        if not args.run.exists() and not args.run.suffix and "/" not in str(args.run):
            # `summary tf-tutorial-conv`: a model name where a run folder goes (names are checked by --model)
            raise LocalconvError(f"{args.run}: no such run folder; for a built-in model give --model {args.run} "
                                 "(see `localconv models`)")
    else:
        check_model_choice(args)  # before the imports below (torch): a usage error answers at once
    from ..reports.summary import format_summary, summarize

    if args.run is not None:
        model, name = _run_model(args.run)
    elif args.cfg is not None and args.model is None:
        from ..configs import load_cfg_model

        model = load_cfg_model(args.cfg, args.params, crop=args.crop or 24, require_params=False)
        name = str(args.cfg)
    else:
        model = model_from_args(args)
        name = args.model
    summary = summarize(model, name)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0


def _run_model(run: Path):  # noqa: ANN202 (a Classifier; torch is imported only here)
    """The model of a run folder, rebuilt from its run.json (no weights are read: the structure is enough)."""
    from ..errors import CheckpointError
    from ..models.registry import build_model_from_spec
    from ..training.checkpoint import read_meta

    meta = read_meta(run)
    try:
        model = build_model_from_spec(meta["model"])
    except (KeyError, TypeError, LocalconvError) as exc:
        raise CheckpointError(f"{run / 'run.json'}: field 'model': cannot rebuild the model ({exc})") from None
    spec = meta["model"]
    return model, str(spec.get("name") or Path(str((spec.get("cfg") or {}).get("layers_name", "cfg"))).name)
