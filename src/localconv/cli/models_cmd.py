"""``localconv models``: the built-in models with their parameter counts."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list built-in models with parameter counts")
    p.add_argument("pattern", nargs="?", default=None,
                   help="only names matching this shell pattern, e.g. 'cc-*' ('_' and '-' are the same)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.registry import create_model, list_models, model_description

    rows = []
    names = list_models(args.pattern)
    if not names:
        from ..errors import ModelError

        raise ModelError(f"no model matches {args.pattern!r}; known models: {', '.join(list_models())}")
    for name in names:
        model = create_model(name)
        rows.append({"name": name, "params": sum(p.numel() for p in model.parameters()),
                     "input": model.input_spec.crop, "description": model_description(name)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'model':<{width}}  {'params':>10}  input  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['params']:>10,}  {r['input']:>5}  {r['description']}")
    return 0
