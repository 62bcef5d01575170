"""``mergesearch search SPEC.yaml``: create or resume a study and run its trials."""

from __future__ import annotations

import argparse

from search.spec import SAMPLERS

NAME = "search"
HELP = "run (or resume) an evolutionary/Bayesian search over merge recipes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="search spec (YAML), e.g. configs/searches/demo.yaml")
    parser.add_argument(
        "--storage",
        help="study storage URL: sqlite:///PATH, postgresql+psycopg2://..., journal:PATH "
        "(default: sqlite:///results/<study>/study.db)",
    )
    parser.add_argument("--study-name", help="study name (default: the spec's name)")
    parser.add_argument("--n-trials", type=int, help="total trials of the study (budget)")
    parser.add_argument("--timeout", help="stop starting trials after this long (600, 30m, 2h)")
    parser.add_argument("--sampler", choices=SAMPLERS, help="override the spec's sampler")
    parser.add_argument("--seed", type=int, help="override the spec's seed")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: spec, 1)")
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")


def overrides(args: argparse.Namespace) -> dict:
    return {
        "storage": args.storage,
        "study_name": args.study_name,
        "n_trials": args.n_trials,
        "timeout": args.timeout,
        "sampler": args.sampler,
        "seed": args.seed,
        "threads": args.threads,
    }


def run(args: argparse.Namespace) -> int:
    from search.study import run_search

    result = run_search(args.spec, progress=not args.no_progress, **overrides(args))
    print(result.summary.render())
    print(
        f"\nstudy {result.spec.name!r} in {result.storage_url}: {len(result.study.trials)} trials "
        f"({result.ran} run now, {result.seconds:.0f} s)"
    )
    return 0
