"""``mergesearch report STUDY``: report.html and PNG plots of a study."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergesearch.merging.errors import ConfigError, MergeRuntimeError
from mergesearch.search.cli.checks import at_least_one
from mergesearch.search.distributed.locate import add_target_arguments, open_study
from mergesearch.search.optimize.trials import PICKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument(
        "--out", help="folder for report.html and plots/ (default: the study's results folder)"
    )
    parser.add_argument(
        "--top", type=int, default=10, help="rows of the top-trials table (default: %(default)s)"
    )
    parser.add_argument(
        "--pick",
        default="weighted",
        metavar="CHOICE",
        help=f"trial of a Pareto front to detail: {', '.join(PICKS)} or an objective's name "
        "(default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from mergesearch.search.report.html import write_report

    at_least_one("--top", args.top)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(
            f"--out {args.out}: is a file, not a folder; give a folder for the report"
        )
    study, location = open_study(args.target, args.study)
    try:
        result = write_report(study, location, args.out, top=args.top, pick=args.pick)
    except OSError as err:  # a read-only results folder, a full disk
        where = err.filename or args.out or location.results_dir
        raise MergeRuntimeError(
            f"{where}: cannot write the report ({err.strerror or err}); pass --out to a "
            "writable folder"
        ) from None
    chosen = f"; chosen trial {result.chosen.number}" if result.chosen else ""
    print(f"report: {result.html} ({result.bytes / 1e6:.1f} MB{chosen})")
    for png in result.pngs:
        print(f"plot: {png}")
    return 0
