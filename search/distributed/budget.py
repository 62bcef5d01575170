"""The trial budget of a study (and its item budget), shared by every worker that joins it.

A budget of N means N trials that count, study-wide, however many processes run them. Each
worker calling ``study.optimize(n_trials=N - done)`` would overshoot (every worker runs its own
N - done), and ``MaxTrialsCallback`` stops a worker only *after* its trial, so W workers near the
end still start up to W - 1 trials too many. ``GatedStudy`` instead decides in ``ask``, the one
place where ``study.optimize`` creates a trial, under the study's cross-process lock: count, then
create (or pop a queued trial) only if the count is below N. Counting and creating cannot then
interleave between workers, so the study never holds more than N counted trials.

What counts (``spent``): complete and pruned trials; failed ones, except a trial interrupted by
the user (it is replaced) and a trial whose worker died (it is failed by heartbeat and re-queued
with the same parameters, and the queued retry counts instead); and running trials, which a
live worker will finish. So a retry neither loses a slot nor takes a second one.

At the end, a worker whose budget is handed out stays while trials run elsewhere (with
heartbeats on): if one of those workers dies, somebody must be there to run its retry.

A trial is claimed inside the lock: its first heartbeat and its ``worker`` attribute are written
before the lock is released. So, seen from inside the lock, a running trial without ``worker``
belongs to a process that died inside ``ask`` (or to a version of this program before claims):
no heartbeat will ever end it, and ``reap_unclaimed`` fails and re-queues it instead. The claim
also records the worker's process (``liveness``): a worker of the same machine that is gone is
found by ``reap_dead_here`` at once, without waiting for its heartbeat's grace period.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from mergesearch.search import attrs as A
from mergesearch.search.distributed.liveness import (
    ProcessRecord,
    dead_here,
    this_process,
    wait_unless_dead,
)
from mergesearch.search.distributed.locks import Lock

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # the ``fail_reason`` of a trial stopped by Ctrl-C / SIGTERM


class BudgetSpent(Exception):
    """Raised by ``GatedStudy.ask`` when the study's budget is handed out: the worker stops."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def retried(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a stale-trial retry re-queued (their whole retry chains)."""
    return {n for t in trials for n in t.system_attrs.get(A.RETRY_HISTORY, ())}


def spent(trials: list[FrozenTrial]) -> int:
    """How many trials count against the budget (see the module docstring)."""
    again = retried(trials)
    count = 0
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            count += 1
        elif t.state == TrialState.FAIL:
            count += t.user_attrs.get(A.FAIL_REASON) != INTERRUPTED and t.number not in again
        elif t.state == TrialState.RUNNING:
            count += A.WORKER in t.user_attrs  # unclaimed ones are reaped (see above)
    return count


def items_spent(trials: list[FrozenTrial]) -> int:
    """Evaluator requests the search spent (held-out scoring not counted): the cost that
    matters once models are large, budgeted (``budget.items``) and reported beside the trial
    count. A running trial records its items when it ends, so it counts from then on."""
    return sum(int(t.user_attrs.get(A.ITEMS, 0)) for t in trials)


def handed_out(trials: list[FrozenTrial], trial_budget: int, item_budget: int | None) -> bool:
    """Whether the budget is spent: ``trial_budget`` counted trials, or (when given)
    ``item_budget`` items."""
    if spent(trials) >= trial_budget:
        return True
    return item_budget is not None and items_spent(trials) >= item_budget


def running_elsewhere(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.RUNNING and A.WORKER in t.user_attrs]


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's own check (fail trials whose heartbeat stopped, call the retry callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def reap_unclaimed(study: optuna.Study, retry: Callable[[optuna.Study, FrozenTrial], None]) -> int:
    """Fail and re-queue (``retry``) the running trials nobody claimed. Call under the lock."""
    reaped = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if A.WORKER in t.user_attrs:
            continue
        if _retire(study, t, retry):
            log.warning("trial %d was left running by a dead process: run again", t.number)
            reaped += 1
    return reaped


def reap_dead_here(study: optuna.Study, retry: Callable[[optuna.Study, FrozenTrial], None]) -> int:
    """Fail and re-queue the running trials whose worker ran on this machine and is gone
    (``liveness``), without waiting for the heartbeat's grace period. Call under the lock."""
    reaped = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = ProcessRecord.from_attr(t.user_attrs.get(A.WORKER_PROCESS))
        if record is None or not dead_here(record) or not _retire(study, t, retry):
            continue
        log.warning(
            "trial %d: its worker (pid %d on this machine) is gone: run again", t.number, record.pid
        )
        reaped += 1
    return reaped


def local_records(trials: Iterable[FrozenTrial]) -> list[ProcessRecord]:
    """The process records of ``trials`` (those that have one)."""
    found = (ProcessRecord.from_attr(t.user_attrs.get(A.WORKER_PROCESS)) for t in trials)
    return [r for r in found if r is not None]


def _retire(
    study: optuna.Study, trial: FrozenTrial, retry: Callable[[optuna.Study, FrozenTrial], None]
) -> bool:
    """Queue the retry of a dead worker's running trial, then fail it; False when another
    process finished it first. In this order, a reaper killed in between leaves the trial
    running, to be found again with its retry already queued, never failed without a retry (a
    failure that would take a slot of the budget)."""
    trials = study.get_trials(deepcopy=False)
    queued = any(t.system_attrs.get(A.FAILED_TRIAL) == trial.number for t in trials)
    if not queued:
        retry(study, trial)
    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


class GatedStudy(optuna.Study):
    """The same study, whose ``ask`` hands out at most ``budget`` counted trials in all, and
    none once ``items`` evaluated items are spent (when given: an item budget can be passed
    by at most the trials already running, one per worker, since a trial's items are known
    only when it ends).

    ``heartbeat`` is the storage that records heartbeats (``None`` when it does not): the
    claimed trial's first heartbeat is written inside the lock, so that no trial is ever counted
    as running without a heartbeat that would let a dead worker's trial go stale."""

    def __init__(
        self,
        study: optuna.Study,
        *,
        budget: int,
        items: int | None = None,
        lock: Lock,
        heartbeat: BaseStorage | None,
        poll_seconds: float,
        retry: Callable[[optuna.Study, FrozenTrial], None],
    ) -> None:
        super().__init__(
            study_name=study.study_name,
            storage=study._storage,
            sampler=study.sampler,
            pruner=study.pruner,
        )
        self.budget = budget
        self.items = items
        self.lock = lock
        self.heartbeat = heartbeat
        self.poll_seconds = poll_seconds
        self.retry = retry
        self.worker = worker_id()
        self.process = this_process()

    def ask(self, fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        waited = False
        while True:
            with self.lock:
                fail_stale_trials(self)
                if self.lock.reliable:
                    reap_unclaimed(self, self.retry)
                    reap_dead_here(self, self.retry)
                trials = self.get_trials(deepcopy=False)
                if not handed_out(trials, self.budget, self.items):
                    trial = super().ask(fixed_distributions)
                    self._claim(trial)
                    return trial
                others = running_elsewhere(trials) if self.heartbeat is not None else []
                if not others:
                    raise BudgetSpent
            if not waited:
                log.info(
                    "budget handed out; waiting for %d trial(s) running on other workers "
                    "(a dead worker's trial is run again here)",
                    len(others),
                )
                waited = True
            # a worker of this machine that dies is seen within a fraction of a second
            wait_unless_dead(local_records(others), self.poll_seconds)

    def _claim(self, trial: optuna.Trial) -> None:
        if self.heartbeat is not None:
            self.heartbeat.record_heartbeat(trial._trial_id)
        trial.set_user_attr(A.WORKER, self.worker)
        trial.set_user_attr(A.WORKER_PROCESS, self.process.to_attr())
