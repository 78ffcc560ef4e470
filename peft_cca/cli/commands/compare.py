"""``peft-cca compare``: the paper's Tables 1, 2 and 7 and the plots, from evaluated runs."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "side-by-side tables and plots of several runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        type=Path,
        help="eval JSON files written by `peft-cca evaluate` (or folders holding eval.json)",
    )
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder")
    parser.add_argument("--quiet", action="store_true", help="write the report without printing it")


def run(args: argparse.Namespace) -> int:
    from peft_cca.reports import load_runs, write_report
    from peft_cca.runtime.runfolder import ensure_output_dir

    ensure_output_dir(args.out)  # a file or read-only --out is refused before any run is read
    report = write_report(load_runs(args.runs), args.out)
    if not args.quiet:
        print(report["markdown"])
    print(f"written: {args.out / 'report.md'}, {args.out / 'report.json'}", *report["figures"].values())
    return 0
