"""``mergesearch demo``: build the tiny demo family if missing, search merges of it, show
where the best merge stands against the sources and their 50/50 average.

``mergesearch demo build`` only builds (or reuses) the family and prints its table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from mergesearch.configs import SEARCHES_DIR
from mergesearch.search.cli.checks import at_least_one
from mergesearch.search.distributed.locks import file_of
from mergesearch.search.distributed.urls import hide_password
from mergesearch.search.optimize.registry import SAMPLER_NAMES

DEMO_SPEC = SEARCHES_DIR / "demo.yaml"
MARGIN = 0.10  # what the best merge must gain over the best specialist, held out
# A family's bits depend on the thread count that trained it (summation order); the shipped
# families were trained on one thread. The search's threads come from the spec.
BUILD_THREADS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo family (default: 0)")
    parser.add_argument("--n-trials", type=int, help="trials of the search (default: the spec's)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="override the demo spec's sampler")
    parser.add_argument("--storage", help="study storage URL (default: results/<study>/study.db)")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads to use (default: the spec's, 2, to search; 1 to train a family)",
    )
    parser.add_argument(
        "--device", help="where the live model lives and is evaluated: cpu, cuda, cuda:N or auto"
    )
    parser.add_argument("--fresh", action="store_true", help="delete an earlier demo study first")
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")
    # optional: `mergesearch demo` alone builds (if needed) and searches
    sub = parser.add_subparsers(
        dest="demo_command", metavar="[build]", title="optional step", required=False
    )
    build_parser = sub.add_parser(
        "build",
        help="only build (or reuse) the demo family and print its table; without it, "
        "`mergesearch demo` also runs the search",
    )
    build_parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="seed(s) of the family (default: 0)"
    )
    build_parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder holding seed<k>/ (default: $MERGESEARCH_DEMO_DIR or ./results/demo-models)",
    )
    build_parser.add_argument(
        "--threads",
        type=int,
        default=BUILD_THREADS,
        metavar="N",
        help=f"CPU threads to use (default: {BUILD_THREADS}; a family's bits depend on it)",
    )
    build_parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    build_parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def demo_spec(family: Any, seed: int) -> dict[str, Any]:
    """The shipped demo spec pointed at a built family (and named after its seed)."""
    import yaml

    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["name"] = "demo" if seed == 0 else f"demo-seed{seed}"
    data["sources"] = {
        "base": str(family.base),
        "models": {task: str(path) for task, path in family.specialists.items()},
    }
    return data


def run(args: argparse.Namespace) -> int:
    if args.demo_command == "build":
        return build(args)

    from mergesearch.search.demo.family import (
        DemoRecipe,
        build_demo_family,
        default_demo_dir,
        load_demo_family,
        shipped_family,
    )
    from mergesearch.search.optimize.outcome import refuse_all_failed
    from mergesearch.search.optimize.study import run_search

    _check_flags(args)
    started = time.perf_counter()
    root = default_demo_dir() / f"seed{args.seed}"
    family = shipped_family(args.seed)
    if family is not None:
        how = "shipped with mergesearch"
    else:
        if load_demo_family(root, DemoRecipe(), args.seed) is None:
            print(f"building the demo family in {root} (a few minutes on one core) ...", flush=True)
        # the search scores the sources itself (baselines): skip the family's own table
        family = build_demo_family(
            seed=args.seed,
            threads=args.threads or BUILD_THREADS,
            evaluate=False,
            progress=not args.no_progress,
        )
        how = "cached" if family.cached else f"built in {time.perf_counter() - started:.0f} s"
    print(f"demo family seed {args.seed} at {family.root} ({how})")
    data = demo_spec(family, args.seed)
    if args.fresh:
        _delete_study(data["name"], args.storage)
    result = run_search(
        data,
        progress=not args.no_progress,
        storage=args.storage,
        n_trials=args.n_trials,
        sampler=args.sampler,
        threads=args.threads,
        device=args.device,
    )
    print()
    print(result.summary.render(gains=False))
    print()
    print(verdict(result.summary, list(family.specialists)))
    took = time.perf_counter() - started
    print(
        f"\nstudy {result.spec.name!r} in {hide_password(result.storage_url)}; demo took {took:.0f} s"
    )
    study_file = file_of(result.storage_url)
    target = study_file.parent if study_file else hide_password(result.storage_url)
    print("look closer:")
    print(f"  mergesearch status {target}      # every trial, best so far, items spent")
    print(f"  mergesearch report {target}      # report.html with plots")
    print(f"  mergesearch export {target}      # the best merge as a model folder + YAML + card")
    refuse_all_failed(result.study)
    return 0


def build(args: argparse.Namespace) -> int:
    """``demo build``: build (or reuse) the family of each seed and print its table."""
    from mergesearch.search.demo.family import build_demo_family, default_demo_dir
    from mergesearch.search.demo.table import print_table

    _quiet_progress_bars()
    out = args.out or default_demo_dir()
    # the parent `demo` parser defines --seed too, as one int
    seeds = args.seed if isinstance(args.seed, list) else [args.seed]
    for seed in seeds:
        started = time.perf_counter()
        family = build_demo_family(
            out, seed=seed, threads=args.threads, force=args.force, progress=not args.no_progress
        )
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


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse bad flags before the family is built: building takes minutes on one core."""
    from mergesearch.search.distributed.storage import open_storage

    at_least_one("--n-trials", args.n_trials)
    at_least_one("--threads", args.threads)
    if args.device:
        from mergesearch.search.optimize.resources import device_for

        device_for(args.device, f"--device {args.device}")
    if args.storage:
        open_storage(args.storage)


def verdict(summary: Any, specialists: list[str]) -> str:
    """Lines comparing the best merge with the best specialist and the 50/50 average, each
    gain with its standard error."""
    best = summary.best[0] if summary.best else None
    if best is None or best.heldout_score is None:
        return "no completed merge with held-out scores yet"
    lines = [f"best merge #{best.number} ({best.method}): held-out mean {best.heldout_score:.3f}"]
    top = summary.best_source(specialists)
    if top is not None:
        gain = summary.gain(best, top)
        ok = "yes" if gain.value >= MARGIN else "no"
        lines.append(
            f"  vs best specialist ({top.label}, {top.heldout_score:.3f}): {gain.describe()} "
            f"(at least +{MARGIN:.2f}: {ok})"
        )
    average = summary.row("average")
    if average is not None and average.heldout_score is not None:
        gain = summary.gain(best, average)
        beats = "yes" if gain.value > 0 else "no"
        lines.append(
            f"  vs 50/50 average ({average.heldout_score:.3f}): {gain.describe()} (beats it: {beats})"
        )
    return "\n".join(lines)


def _delete_study(name: str, storage_url: str | None) -> None:
    import optuna

    from mergesearch.search.distributed.storage import default_storage_url, open_storage

    storage = open_storage(storage_url or default_storage_url(name))
    with contextlib.suppress(KeyError):  # nothing to delete
        optuna.delete_study(study_name=name, storage=storage)
