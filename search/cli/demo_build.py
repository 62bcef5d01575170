"""``mergesearch demo build``: build (or reuse) the demo family and print its table.

``search/commands/demo.py`` wires these two functions into the CLI: ``add_build_arguments`` on
its ``build`` subparser, ``demo_build_command`` as what that subcommand runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from mergesearch.search.demo.family import build_demo_family, default_demo_dir


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="seed(s) of the family (default: 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder holding seed<k>/ (default: $MERGESEARCH_DEMO_DIR or ./results/demo-models)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")


def demo_build_command(args: argparse.Namespace) -> int:
    from mergesearch.search.demo.table import print_table

    _quiet_progress_bars()
    out = args.out or default_demo_dir()
    # the parent `demo` parser defines --seed too, as one int
    seeds = args.seed if isinstance(args.seed, list) else [args.seed]
    for seed in seeds:
        started = time.perf_counter()
        family = build_demo_family(out, seed=seed, threads=args.threads, force=args.force)
        took = time.perf_counter() - started
        how = (
            f"cached (built in {family.build_seconds:.0f} s), loaded in {took:.1f} s"
            if family.cached
            else f"built in {took:.0f} s"
        )
        print_table(
            family.table,
            f"demo family seed {seed} at {family.root}: {how}\n"
            "greedy exact match, held-out split (200 items per task)",
        )
    return 0


def _quiet_progress_bars() -> None:
    """The table is the output: no bars from tqdm, datasets or transformers in between."""
    os.environ["TQDM_DISABLE"] = "1"
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
