"""What one finished search yields for the suite, read from its study alone.

The merge a search hands over is its best trial on the search split (baselines excluded), as
``mergesearch search`` reports and ``mergesearch export`` ships it; its held-out score is what
the suite compares. Cost is counted in trials and, where the study records them (trial user
attribute ``items``: evaluator requests), in evaluated items; a study without item counts gets
an estimate of one full search split per evaluated trial, flagged as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from optuna.trial import TrialState

from mergesearch.search.demo import tasks as demo_tasks
from mergesearch.search.optimize.study import SearchResult

ITEMS_ATTR = "items"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Outcome:
    heldout: float | None  # held-out score of the merge chosen on the search split
    search: float | None  # its search-split score
    method: str | None
    trial: int | None
    merge_config: str | None  # mergekit YAML of the chosen merge
    params: dict[str, Any]
    trials: int  # finished trials, baselines included
    items: int | None  # evaluated items the study counted; None where it counts none
    items_estimated: int  # one full search split per evaluated trial
    baselines: dict[str, float | None] = field(default_factory=dict)  # held-out of each
    seconds: float = 0.0
    # held-out gain of the chosen merge over the best single source, its paired standard error
    best_source: str | None = None
    gain: float | None = None
    gain_stderr: float | None = None
    # the chosen merge's held-out (document id, score) pairs per objective: for a paired
    # comparison with the reference; too long for a record, so ``to_dict`` leaves them out
    heldout_items: dict[str, list] = field(default_factory=dict, repr=False)

    @property
    def items_spent(self) -> int:
        return self.items if self.items is not None else self.items_estimated

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        del record["heldout_items"]
        return record


def outcome(result: SearchResult) -> Outcome:
    """The chosen merge, its scores and the search's spending."""
    study, summary = result.study, result.summary
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    counted = [t.user_attrs[ITEMS_ATTR] for t in trials if ITEMS_ATTR in t.user_attrs]
    evaluated = [t for t in trials if "duplicate_of" not in t.user_attrs]
    per_trial = demo_tasks.SPLIT_SIZE * len(result.spec.objectives)
    best = summary.best[0] if summary.best else None
    chosen = next((t for t in trials if best and t.number == best.number), None)
    source = summary.best_source()
    gain = summary.gain(best, source) if best and source else None
    return Outcome(
        heldout=best.heldout_score if best else None,
        search=best.score if best else None,
        method=best.method if best else None,
        trial=best.number if best else None,
        merge_config=chosen.user_attrs.get("merge_config") if chosen else None,
        params=dict(chosen.params) if chosen else {},
        trials=len(trials),
        items=int(sum(counted)) if counted else None,
        items_estimated=per_trial * len(evaluated),
        baselines={
            r.label: r.heldout_score
            for r in summary.rows
            if not r.label.startswith(("best", "pareto"))
        },
        seconds=round(result.seconds, 1),
        best_source=source.label if source else None,
        gain=gain.value if gain else None,
        gain_stderr=gain.stderr if gain else None,
        heldout_items=dict(best.heldout_items) if best else {},
    )
