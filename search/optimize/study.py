"""``run_search(spec)``: create or resume a study, run trials through ``study.optimize``, report.

The loop is Optuna's own ``study.optimize`` (not ask/tell) so that heartbeats and stale-trial
retries of RDB storages work for distributed searches. Any number of processes, on any number
of machines, may run the same spec against the same storage: they join one study by name. The
steps that must not interleave between them (creating the study, enqueueing the baselines
once per study, handing out the last trials of the budget, held-out scoring) run under the
study's cross-process lock (``search.locks``); the budget is study-wide (``search.budget``).

Baselines (each source alone, the uniform average) are enqueued first, once per study. The
budget counts every trial of the study, so the same command on the same storage resumes where it
stopped; trials that finished are kept, and a config scored before is answered from the study
instead of re-evaluated. At the end the best trial(s) and the baselines are scored on the
held-out split(s); those scores are stored in the study (user attribute ``heldout``) so
``mergesearch status`` can show them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from mergesearch import merging
from mergesearch.evaluators import runtime
from mergesearch.search import attrs as A
from mergesearch.search.distributed.budget import (
    BudgetSpent,
    GatedStudy,
    fail_stale_trials,
    handed_out,
    reap_dead_here,
    reap_unclaimed,
    spent,
)
from mergesearch.search.distributed.faults import stop_on_storage_failure
from mergesearch.search.distributed.storage import (
    default_storage_url,
    lock_for,
    open_storage,
    retry_once,
)
from mergesearch.search.distributed.urls import hide_password
from mergesearch.search.errors import SpecError, TrialFailed
from mergesearch.search.optimize import attachments, versions
from mergesearch.search.optimize.objective import LiveModel, TrialRunner
from mergesearch.search.optimize.preflight import check_against_sources
from mergesearch.search.optimize.progress import Progress
from mergesearch.search.optimize.resources import check_fit, resolve_device
from mergesearch.search.optimize.samplers import (
    is_baseline,
    make_pruner,
    make_sampler,
    resolve_sampler_name,
)
from mergesearch.search.optimize.scoring import Scorer
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.optimize.summary import Summary, best_trials, summarize
from mergesearch.search.spec.load import load_spec
from mergesearch.search.spec.schema import SearchSpec

log = logging.getLogger(__name__)

MAX_HELDOUT_TRIALS = 8  # of a Pareto front, the ones scored on the held-out split
SEED_STRIDE = 7919  # sampler seeds of the workers of one study lie this far apart


@dataclass
class SearchResult:
    study: optuna.Study
    spec: SearchSpec
    storage_url: str
    summary: Summary
    ran: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_search(
    spec_or_path: str | Path | dict[str, Any] | SearchSpec,
    *,
    progress: bool = True,
    heldout: bool = True,
    allow_spec_change: bool = False,
    **overrides: Any,
) -> SearchResult:
    """Run (or resume) the search a spec describes.

    ``overrides`` take the command-line flags: ``storage``, ``study_name``, ``n_trials``,
    ``n_items``, ``timeout``, ``sampler``, ``seed``, ``threads``, ``pruner``, ``heartbeat``,
    ``grace_period``.
    A resume whose objectives or sources differ from the study's is refused unless
    ``allow_spec_change``: then the study records a new spec version (``optimize.versions``).
    """
    started = time.perf_counter()
    spec = load_spec(spec_or_path, **overrides)
    if not runtime.verbose():  # Optuna's "A new study created" and the like
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(spec.threads)
    url = spec.storage or default_storage_url(spec.name)
    merger = merging.Merger(cache_bytes=int(spec.cache_gb * 2**30))
    baselines = _baseline_configs(spec)
    # sources before storage: a refused spec leaves no empty study behind
    num_layers = _check_sources(spec, merger, baselines)
    check_against_sources(spec, merger, num_layers)
    # the device and the memory before storage too: a search that cannot fit leaves no study
    device = resolve_device(spec)
    check_fit(spec, merger, list(baselines.values()), device)
    # evaluators (tasks, metrics) before storage too: a typo leaves no study behind
    scorer = Scorer(spec)
    storage = open_storage(
        url, heartbeat_interval=spec.heartbeat.interval, grace_period=spec.heartbeat.grace
    )
    lock = lock_for(storage, url, spec.name)
    space = SearchSpace(spec, num_layers)
    with lock:  # N workers starting at once: one creates the study and enqueues the baselines
        study, version = _open_study(spec, space, scorer, storage, url, allow_spec_change)
        # A dead worker's baseline is re-queued by its retry, not by _enqueue_baselines.
        fail_stale_trials(study)
        if lock.reliable:
            reap_unclaimed(study, retry_once())
            reap_dead_here(study, retry_once())  # a worker of this machine killed: no waiting
        so_far = study.get_trials(deepcopy=False)
        remaining = spec.budget.trials - spent(so_far)
        if handed_out(so_far, spec.budget.trials, spec.budget.items):
            remaining = 0  # the item budget is spent: no baseline is queued again
        if spec.baselines and remaining > 0:
            _enqueue_baselines(study, baselines, version)
    log.info(
        "study %r in %s: %d trial(s) so far, sampler %s",
        spec.name,
        hide_password(url),
        len(study.trials),
        resolve_sampler_name(spec, space),
    )
    study = GatedStudy(
        study,
        budget=spec.budget.trials,
        items=spec.budget.items,
        lock=lock,
        heartbeat=storage if getattr(storage, "heartbeat_interval", None) else None,
        poll_seconds=min(spec.heartbeat.interval, 5),
        retry=retry_once(),
    )
    runner = TrialRunner(
        spec, space, scorer, LiveModel(merger, device), baselines, spec_version=version
    )
    # Always enter the loop: with the budget handed out, trials running on other workers may
    # still die and need a retry here; ``ask`` returns at once when there is nothing to wait for.
    bar = Progress(
        max(remaining, 0) or None, enabled=progress, scorer=scorer, item_budget=spec.budget.items
    )
    verbosity = optuna.logging.get_verbosity()
    # ERROR: Optuna's warning for a failed or interrupted trial carries a traceback; the
    # objective logs each failure in one line, and Ctrl+C is reported by the CLI.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # a full disk or a lost database: one line, this worker's trial marked interrupted
    with stop_on_storage_failure(study, url):
        try:
            study.optimize(
                runner,
                timeout=spec.budget.timeout,
                catch=(TrialFailed,),
                callbacks=[bar],
                gc_after_trial=False,
            )
        except BudgetSpent:
            pass  # the study-wide budget is handed out: the normal end of a worker
        except KeyboardInterrupt:
            if spec.baselines:  # an interrupted baseline waits in the queue for the other workers
                with lock:
                    _enqueue_baselines(study, baselines, version)
            raise
        finally:
            bar.close()
            optuna.logging.set_verbosity(verbosity)
    ran = bar.count
    if heldout:
        # the first worker to finish scores; the others find the scores stored
        with lock, stop_on_storage_failure(study, url):
            score_heldout(study, spec, scorer, runner.live)
    summary = summarize(study)
    return SearchResult(study, spec, url, summary, ran, time.perf_counter() - started)


# ---------------------------------------------------------------------- study set-up


def _baseline_configs(spec: SearchSpec) -> dict[str, dict[str, Any]]:
    return SearchSpace(spec).baselines()


def _check_sources(
    spec: SearchSpec, merger: merging.Merger, baselines: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Open every source once, up front: a wrong path or an incompatible model stops here,
    with one line, before any trial. Returns each source's depth (for passthrough slices)."""
    depths = {}
    for name in spec.sources.names():
        try:
            out = merger.output_config(baselines[name])
        except merging.ConfigError as err:
            key = "sources.base" if name == spec.sources.base_name else f"sources.models.{name}"
            raise SpecError(f"{spec.source}: {key}: {err}") from None
        depths[name] = int(getattr(out, "num_hidden_layers", 0) or 0)
    for name, data in baselines.items():  # the average: do the sources merge with each other?
        if name in depths:
            continue
        try:
            merger.plan(merging.load_merge_config(data, source_name=f"baseline {name!r}"))
        except merging.ConfigError as err:
            raise SpecError(f"{spec.source}: sources: {err}") from None
    return depths


def _open_study(
    spec: SearchSpec,
    space: SearchSpace,
    scorer: Scorer,
    storage: Any,
    url: str,
    allow_spec_change: bool = False,
) -> tuple[optuna.Study, int]:
    """The study, created or resumed, and the spec version its new trials run under."""
    directions = scorer.study_directions()
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions,
        load_if_exists=True,
        pruner=make_pruner(spec),
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise SpecError(
            f"{spec.source}: study {spec.name!r} in {hide_password(url)} optimises {stored}, "
            f"this spec {directions}; "
            "use another study name"
        )
    attrs = study.user_attrs
    fingerprint = space.fingerprint()
    if A.SPACE in attrs and attrs[A.SPACE] != fingerprint:
        changed = sorted(set(attrs[A.SPACE].items()) ^ set(fingerprint.items()))[0][0]
        raise SpecError(
            f"{spec.source}: study {spec.name!r} in {hide_password(url)} was created with "
            "another search space "
            f"(parameter {changed!r} differs); use another study name or the original spec"
        )
    new = A.SPACE not in attrs
    if new:
        study.set_user_attr(A.SPEC, spec.to_yaml())
        study.set_user_attr(A.SPACE, fingerprint)
        study.set_user_attr(A.METHOD_PARAMS, space.used)
    prints = versions.fingerprint(spec, scorer.directions)
    version, change = versions.record(study, spec, prints, allow_change=allow_spec_change)
    if change is not None and not allow_spec_change:
        raise SpecError(
            f"{spec.source}: study {spec.name!r} in {hide_password(url)} was scored under "
            f"another spec: {change}; pass --allow-spec-change (allow_spec_change=True) to go "
            "on under this one (new trials are ranked among themselves), or use another "
            "study name"
        )
    if change is not None:
        log.warning("spec version %d from trial %d on: %s", version, len(study.trials), change)
    if new or change is not None:
        _describe_objectives(study, spec, scorer)
    sampler_name = resolve_sampler_name(spec, space)
    if attrs.get(A.SAMPLER) != sampler_name:
        study.set_user_attr(A.SAMPLER, sampler_name)
    # A resumed study gets a different sampler seed, or a seeded sampler would replay (and
    # the de-duplication answer) the proposals of the first run; so does each worker that joins
    # (the first process keeps the spec's seed: a one-process search stays reproducible).
    joined = int(attrs.get(A.WORKERS_JOINED, 0))
    study.set_user_attr(A.WORKERS_JOINED, joined + 1)
    seed = spec.sampler_seed + len(study.trials) + SEED_STRIDE * joined
    n_baselines = len(space.baselines()) if spec.baselines else 0
    study.sampler = make_sampler(
        spec, space, seed, search_budget=max(spec.budget.trials - n_baselines, 1)
    )
    return study, version


def _describe_objectives(study: optuna.Study, spec: SearchSpec, scorer: Scorer) -> None:
    """What status, report, export and the dashboard read about the (current) objectives."""
    study.set_user_attr(A.SOURCES, {n: spec.sources.path(n) for n in spec.sources.names()})
    study.set_user_attr(
        A.OBJECTIVES,
        [
            {
                "name": o.name,
                "weight": o.weight,
                "direction": scorer.directions[o.name],
                "splits": sorted(o.splits),
            }
            for o in spec.objectives
        ],
    )
    study.set_user_attr(A.COMBINE, spec.combine)
    names = [o.name for o in spec.objectives]
    attachments.name_metrics(
        study, names if len(names) == len(study.directions) else ["weighted score"]
    )
    attachments.save_spec_note(study)


def _enqueue_baselines(
    study: optuna.Study, baselines: dict[str, dict[str, Any]], version: int
) -> None:
    """Enqueue each baseline unless it ran under this spec version, runs or waits already.
    (``skip_if_exists`` cannot tell baselines apart, as none has parameters, and would also
    skip interrupted ones.) A waiting baseline runs under the version of whoever takes it."""
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    present = {
        t.user_attrs.get(A.BASELINE)
        for t in study.get_trials(deepcopy=False, states=live)
        if is_baseline(t) and (t.state == TrialState.WAITING or versions.version_of(t) == version)
    }
    for name in baselines:
        if name not in present:
            study.enqueue_trial({}, user_attrs={A.BASELINE: name, A.SPEC_VERSION: version})


# ---------------------------------------------------------------------- held-out scores


def score_heldout(study: optuna.Study, spec: SearchSpec, scorer: Scorer, live: LiveModel) -> None:
    """Score baselines and best trial(s) on every split but ``search``; store in the study."""
    splits = [s for s in scorer.splits() if s != "search"]
    if not splits:
        return
    stored = dict(study.user_attrs.get(A.HELDOUT, {}))
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    wanted = versions.of_current(study, [t for t in done if is_baseline(t)])
    wanted += best_trials(study, MAX_HELDOUT_TRIALS)
    changed = False
    for trial in wanted:
        if str(trial.number) in stored or A.MERGE_CONFIG not in trial.user_attrs:
            continue
        config = merging.load_merge_config(yaml.safe_load(trial.user_attrs[A.MERGE_CONFIG]))
        model, tokenizer, _ = live.merge(config)
        entry: dict[str, Any] = {A.CONFIG_HASH: trial.user_attrs.get(A.CONFIG_HASH)}
        for split in splits:
            scores = scorer.score(model, tokenizer, split, per_item=True)
            entry[split] = {**scores.values, "score": _weighted(scorer, scores.values)}
            if scores.items:  # kept for the standard error of a gain (paired by item)
                entry[split][A.PER_ITEM] = {
                    name: [[doc, round(score, 6)] for doc, score in items]
                    for name, items in scores.items.items()
                }
        stored[str(trial.number)] = entry
        changed = True
    if changed:
        study.set_user_attr(A.HELDOUT, stored)


def _weighted(scorer: Scorer, values: dict[str, float]) -> float:
    """The held-out counterpart of the study value: the weighted sum of the objectives scored,
    a minimised one negated when the study maximises (a Pareto study counts as maximising),
    as status and report compute "weighted" from the search scores."""
    reference = "maximize" if scorer.spec.combine == "pareto" else scorer.study_directions()[0]
    present = [o for o in scorer.objectives if o.name in values]
    if not present:
        return math.nan
    return sum(
        (1.0 if scorer.directions[o.name] == reference else -1.0) * o.weight * values[o.name]
        for o in present
    )
