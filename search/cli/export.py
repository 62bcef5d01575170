"""``mergesearch export STUDY``: a trial's model on disk, with YAML and card."""

from __future__ import annotations

import argparse

from mergesearch.merging.engine import DEFAULT_SHARD_SIZE
from mergesearch.search.cli.checks import add_merge_threads, at_least_one
from mergesearch.search.distributed.locate import add_target_arguments, open_study
from mergesearch.search.optimize.trials import PICKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--trial", type=int, metavar="N", help="trial number (default: the best)")
    parser.add_argument(
        "--pick",
        default="weighted",
        metavar="CHOICE",
        help=f"which trial of a Pareto front: {', '.join(PICKS)} or an objective's name "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        help="output folder (default: best/ in the study's results folder); it holds the model, "
        "mergekit_config.yml and README.md",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--out-shard-size",
        default=DEFAULT_SHARD_SIZE,
        help="largest shard in bytes, with k/M/G suffixes (default: %(default)s)",
    )
    add_merge_threads(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from mergesearch.search.export.exporter import baseline_beating, export_trial
    from mergesearch.search.optimize.trials import baseline_name, method_of

    at_least_one("--threads", args.threads)
    study, location = open_study(args.target, args.study)
    result = export_trial(
        study,
        location,
        number=args.trial,
        pick=args.pick,
        out_dir=args.out,
        overwrite=args.overwrite,
        shard_size=args.out_shard_size,
        threads=args.threads,
        progress=not args.no_progress,
    )
    trial = result.trial
    print(
        f"exported trial {trial.number} ({method_of(trial)}; {result.why}) to "
        f"{result.model_dir} in {result.seconds:.1f} s"
    )
    print(f"mergekit config: {result.yaml_path}; model card: {result.model_dir / 'README.md'}")
    if args.trial is None:
        better = baseline_beating(study, trial)
        if better is not None:
            print(
                f"note: baseline {baseline_name(better)!r} (trial {better.number}) scores higher "
                f"({better.values[0]:.4f} vs {trial.values[0]:.4f}); export it with "
                f"--trial {better.number}"
            )
    return 0
