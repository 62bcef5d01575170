"""Whether a search produced anything: a study whose every trial failed is a failed search.

Each failing trial is recorded and the search goes on, which is right for one bad candidate;
but when no trial of the study ever completed, the spec or the machine is at fault, and a
command that exits 0 would tell a script (or a scheduler) that the search worked.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from mergesearch.search import attrs as A
from mergesearch.search.distributed.budget import INTERRUPTED
from mergesearch.search.errors import SearchRuntimeError

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def all_failed(study: optuna.Study) -> str | None:
    """A one-line account when the study has failed trials and not one finished, else None."""
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed or any(t.state in DONE for t in trials):
        return None
    reasons = [t.user_attrs.get(A.FAIL_REASON) for t in failed]
    first = next((r for r in reasons if r and r != INTERRUPTED), None)
    why = f"; the first says: {first}" if first else ""
    return (
        f"study {study.study_name!r}: all {len(failed)} trial(s) failed, none completed{why}; "
        "fix the cause (`mergesearch status` lists every reason) and run again"
    )


def refuse_all_failed(study: optuna.Study) -> None:
    """``SearchRuntimeError`` (exit 1) when every trial of the study failed."""
    message = all_failed(study)
    if message is not None:
        raise SearchRuntimeError(message)
