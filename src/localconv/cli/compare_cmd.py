"""``localconv compare``: several runs in one table, with PNG plots and a Markdown or HTML report."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare runs: one table, PNG plots and a Markdown/HTML report")
    p.add_argument("runs", nargs="+", type=Path, help="run folders written by `localconv train`")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the report and its plots (default: ./compare; with --json, none is written "
                        "unless --out is given)")
    p.add_argument("--format", choices=("md", "html"), default="md",
                   help="report format: md (links the PNG plots next to it) or html (one self-contained file, "
                        "plots embedded)")
    p.add_argument("--title", default="localconv runs", help="report title")
    p.add_argument("--json", action="store_true",
                   help="print the rows as JSON instead of the table (one object per run; writes no report unless "
                        "--out is given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None or args.json else Path("compare")  # --json alone writes nothing
    if out is not None:
        from ..optional_deps import require

        require("matplotlib.pyplot", "localconv compare (its plots)", "matplotlib")  # before anything is created
    from ..reports.compare import compare_rows, format_table, load_runs, write_report

    runs = load_runs(args.runs)
    rows = compare_rows(runs)
    report = write_report(runs, rows, out, args.format, args.title) if out is not None else None
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    if report is not None:
        print(f"report: {report} (plots in {report.parent})", file=sys.stderr)
    return 0
