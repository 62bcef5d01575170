"""``mergesearch search SPEC.yaml``: create or resume a study and run its trials.

The same command on several machines, with the same ``--storage`` and ``--study-name``, is a
distributed search; ``--workers N`` starts N such processes here (``search.workers``).
"""

from __future__ import annotations

import argparse
import os
import signal

from mergesearch.search import attrs as A
from mergesearch.search.distributed.urls import hide_password
from mergesearch.search.distributed.workers import STORAGE_ENV, WORKER_ENV
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize.outcome import refuse_all_failed
from mergesearch.search.optimize.registry import SAMPLER_NAMES

# override key -> flag, for the command line of each worker that ``--workers`` starts (the
# storage URL goes through the environment, STORAGE_ENV: it may carry a password)
FLAGS = {
    "study_name": "--study-name",
    "n_trials": "--n-trials",
    "n_items": "--n-items",
    "timeout": "--timeout",
    "sampler": "--sampler",
    "seed": "--seed",
    "heartbeat": "--heartbeat",
    "grace_period": "--grace-period",
    "device": "--device",
    "memory_limit_gb": "--memory-limit-gb",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec", metavar="SPEC", help="search spec (YAML), e.g. configs/searches/demo.yaml"
    )
    parser.add_argument(
        "--storage",
        help="study storage URL: sqlite:///PATH, postgresql+psycopg2://USER:PASS@HOST/DB, "
        "mysql+pymysql://..., journal:PATH (default: $MERGESEARCH_STORAGE, else "
        "sqlite:///results/<study>/study.db); processes on the same URL and study name share "
        "one search. A URL with a password is safer in $MERGESEARCH_STORAGE: a command line "
        "is visible to every user of the machine",
    )
    parser.add_argument("--study-name", help="study name (default: the spec's name)")
    parser.add_argument("--n-trials", type=int, help="total trials of the study (budget)")
    parser.add_argument(
        "--n-items",
        type=int,
        help="total evaluated items of the study (budget): no trial starts once they are spent",
    )
    parser.add_argument("--timeout", help="stop starting trials after this long (600, 30m, 2h)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, help="override the spec's sampler")
    parser.add_argument("--seed", type=int, help="override the spec's seed")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads to use, for merging and evaluating (default: the spec's threads, 1)",
    )
    parser.add_argument(
        "--device",
        help="where the live model lives and is evaluated: cpu, cuda, cuda:N or auto "
        "(default: the spec's device, cpu)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        metavar="GB",
        help="memory the search may use (default: what the machine has available); a search "
        "that needs more is refused before its first trial",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes to start on this machine (default 1: run here); "
        "torch threads are split between them",
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        metavar="SECONDS",
        help="heartbeat interval of running trials (RDB storages; default: spec, 30)",
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        metavar="SECONDS",
        help="a trial without heartbeat this long is failed and retried (default: 4 intervals)",
    )
    parser.add_argument(
        "--allow-spec-change",
        action="store_true",
        help="resume although the objectives or sources changed: the study records a new spec "
        "version, and new trials are compared (and de-duplicated) among themselves only",
    )
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")


def overrides(args: argparse.Namespace) -> dict:
    return {
        "storage": args.storage or os.environ.get(STORAGE_ENV) or None,
        "study_name": args.study_name,
        "n_trials": args.n_trials,
        "n_items": args.n_items,
        "timeout": args.timeout,
        "sampler": args.sampler,
        "seed": args.seed,
        "threads": args.threads,
        "heartbeat": args.heartbeat,
        "grace_period": args.grace_period,
        "device": args.device,
        "memory_limit_gb": args.memory_limit_gb,
    }


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise SpecError(f"--workers: give 1 or more processes, got {args.workers}")
    if args.workers > 1:
        return _run_workers(args)
    from mergesearch.search.optimize.study import run_search

    # SIGTERM (Slurm, the --workers parent) stops a worker like Ctrl-C: its trial is marked
    # interrupted and replaced, instead of waiting out the heartbeat grace period.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_search(
            args.spec,
            progress=not args.no_progress,
            allow_spec_change=args.allow_spec_change,
            **overrides(args),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    ran = f"{result.ran} run now, {result.seconds:.0f} s"
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:  # one of several: the parent prints the summary once
        print(f"worker {worker} done: {ran}")
    else:
        print(result.summary.render())
        print(
            f"\nstudy {result.spec.name!r} in {hide_password(result.storage_url)}: "
            f"{len(result.study.trials)} trials ({ran})"
        )
    refuse_all_failed(result.study)
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run_workers(args: argparse.Namespace) -> int:
    """Check the spec and storage here (one error line, not N), then start and wait."""
    import optuna

    from mergesearch.search.distributed import workers
    from mergesearch.search.distributed.storage import default_storage_url, open_storage
    from mergesearch.search.optimize.resources import check_workers_fit
    from mergesearch.search.optimize.summary import summarize
    from mergesearch.search.spec.load import load_spec

    spec = load_spec(args.spec, **overrides(args))
    url = spec.storage or default_storage_url(spec.name)
    if url.startswith("memory"):
        raise SpecError("--workers: memory: storage is private to one process; use a file or URL")
    check_workers_fit(spec, args.workers)  # N searches on this machine's memory, before any
    open_storage(url)  # creates the tables once, before N workers race for them
    threads = workers.threads_per_worker(spec.threads, args.workers)
    argv = [args.spec, "--no-progress"]
    if args.allow_spec_change:
        argv.append("--allow-spec-change")
    for key, value in overrides(args).items():
        if key in FLAGS and value is not None:
            argv += [FLAGS[key], str(value)]
    print(
        f"starting {args.workers} workers on {hide_password(url)} (study {spec.name!r}), "
        f"{threads} torch thread(s) each, {workers.cores()} core(s)",
        flush=True,
    )
    # the URL reaches the workers through their environment: a command line is readable by
    # every user of the machine (ps), and the URL may carry a password
    started = workers.start_workers(argv, args.workers, threads, env={STORAGE_ENV: url})
    codes = workers.wait_for(started)

    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    except KeyError:  # every worker stopped before creating the study: their lines say why
        print(f"no study {spec.name!r} in {hide_password(url)}; worker exit codes: {codes}")
        return workers.exit_code(codes)
    by_worker: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and A.WORKER in trial.user_attrs:
            by_worker[trial.user_attrs[A.WORKER]] = by_worker.get(trial.user_attrs[A.WORKER], 0) + 1
    for worker, code in zip(started, codes, strict=True):
        state = "ok" if code == 0 else f"exit {code}"
        count = by_worker.get(worker.name, 0)
        print(f"worker {worker.index} ({worker.name}): {state}, {count} trial(s) finished")
    print(summarize(study).render())
    print(f"\nstudy {spec.name!r} in {hide_password(url)}: {len(study.trials)} trials")
    code = workers.exit_code(codes)
    if code == 0:
        refuse_all_failed(study)
    return code
