"""Failures of the machine, not of a candidate: a full disk, a storage that stopped answering.

A trial that fails on its own merits is recorded and the search goes on. A full disk or a lost
database fails every trial after it the same way, and the failure surfaces wherever the next
write happens: inside the objective, in Optuna's bookkeeping after it (which then raises again
while handling the first error), or in the heartbeat thread. ``storage_failure`` looks through
the whole chain of exceptions for such a cause and words it in one line; the search stops there
and says how to resume (``optimize.study``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator

import optuna
import sqlalchemy
from optuna.trial import TrialState

from mergesearch.search import attrs as A
from mergesearch.search.distributed.budget import INTERRUPTED, worker_id
from mergesearch.search.distributed.urls import hide_password
from mergesearch.search.errors import SearchRuntimeError

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how SQLite (SQLITE_FULL), PostgreSQL (DiskFull) and the OS word a full disk
DISK_FULL_WORDS = ("database or disk is full", "no space left on device", "disk full")
NO_SPACE = "no space left on device"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        orig = getattr(err, "orig", None)  # SQLAlchemy's wrapper around the driver's error
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield orig
            seen.add(id(orig))
        err = err.__cause__ or err.__context__


def is_disk_full(err: BaseException) -> bool:
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return True
        if any(word in str(link).lower() for word in DISK_FULL_WORDS):
            return True
    return False


def storage_failure(err: BaseException) -> str | None:
    """One line on what failed when ``err`` comes from a full disk or a failing database,
    ``None`` when it is anything else (a bug keeps its traceback)."""
    if is_disk_full(err):
        return NO_SPACE
    for link in _chain(err):
        if isinstance(link, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            first = (str(link.orig or link).strip().splitlines() or [type(link).__name__])[0]
            return f"the database stopped answering ({first})"
    return None


@contextlib.contextmanager
def stop_on_storage_failure(study: optuna.Study, url: str) -> Iterator[None]:
    """Turn a full disk or a lost database inside the block into one ``SearchRuntimeError``
    line (exit 1), after marking this worker's running trials interrupted."""
    try:
        yield
    except Exception as err:
        reason = storage_failure(err)
        if reason is None:
            raise
        numbers = release_own_trials(study)
        held = f" during trial {', '.join(map(str, numbers))}" if numbers else ""
        raise SearchRuntimeError(
            f"storage {hide_password(url)}: {reason}{held}; the study keeps every finished "
            "trial and runs the stopped one again: fix the cause (free space, restart the "
            "database) and run the same command again"
        ) from None


def release_own_trials(study: optuna.Study) -> list[int]:
    """Mark this worker's running trials interrupted (replaced, not counted), as Ctrl-C does.

    Best effort: with the disk full these writes may fail as well; the trial then stays
    running until the next worker on this machine sees its process gone and retries it, or
    its heartbeat runs out elsewhere. Returns the trials' numbers."""
    me, storage, numbers = worker_id(), study._storage, []
    try:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:  # the database itself is gone: nothing to mark
        return numbers
    for trial in running:
        if trial.user_attrs.get(A.WORKER) != me:
            continue
        numbers.append(trial.number)
        try:
            storage.set_trial_user_attr(trial._trial_id, A.FAIL_REASON, INTERRUPTED)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except Exception:  # still failing: the liveness or heartbeat rule recovers it
            log.debug("trial %d left running: the storage refuses writes", trial.number)
    return numbers
