"""``localconv export``: a run's classifier as a deployable ONNX file or ``torch.export`` program."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's classifier, preprocessing included, as ONNX or a torch.export "
                                      "program (checked against the eager model)")
    p.add_argument("run", type=Path, help="run folder written by `localconv train`")
    p.add_argument("--format", choices=("onnx", "exported-program"), default="onnx",
                   help="onnx (runs with onnxruntime, no torch; `localconv predict FILE.onnx`) or exported-program "
                        "(torch.export, a .pt2 file for torch.export.load)")
    p.add_argument("--out", type=Path, default=None,
                   help="the file to write (.onnx or .pt2; default RUN/model.onnx or RUN/model.pt2); a side-car "
                        "OUT.json states the input layout, crop, normalization, classes and outputs")
    p.add_argument("--weights", choices=("ema", "raw", "best"), default="ema",
                   help="averaged (ema; raw if the recipe keeps none), raw, or the best-evaluated weights")
    p.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.exporter import export_run

    result = export_run(args.run, args.format, args.out, args.weights)
    if args.json:
        print(json.dumps({"file": str(result.path), "metadata": str(result.sidecar),
                          "max_abs_diff": result.max_abs_diff, "checked_images": result.n_checked}))
        return 0
    print(f"{result.path}: {args.format}, uint8 NCHW images in, logits and probabilities out, dynamic batch; "
          f"matches the eager model on {result.n_checked} images (max difference {result.max_abs_diff:.2g})")
    print(f"{result.sidecar}: input layout, crop, normalization, classes", file=sys.stderr)
    return 0
