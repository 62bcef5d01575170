"""The progress bar of a search: trials done, best so far, ETA, and one line per trial."""

from __future__ import annotations

import logging
import sys

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from mergesearch.search import attrs as A
from mergesearch.search.distributed.budget import items_spent
from mergesearch.search.optimize.scoring import Scorer
from mergesearch.search.optimize.summary import best_trials

log = logging.getLogger("search")


class Progress:
    """An Optuna callback; with ``enabled=False`` it logs the per-trial lines instead."""

    def __init__(
        self, total: int | None, *, enabled: bool, scorer: Scorer, item_budget: int | None = None
    ):
        self.enabled = enabled
        self.scorer = scorer
        self.item_budget = item_budget  # shown as "spent / budget items" when there is one
        self.count = 0
        self.bar = tqdm(
            total=total,
            unit="trial",
            desc="search",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.count += 1
        line = trial_line(trial, [o.name for o in self.scorer.objectives])
        best = best_trials(study)
        items = f"{items_spent(study.get_trials(deepcopy=False)):,}"
        items += f" / {self.item_budget:,} items" if self.item_budget else " items"
        if best and len(best) == 1:
            self.bar.set_postfix_str(f"best {best[0].values[0]:.4f} (#{best[0].number}), {items}")
        elif best:
            self.bar.set_postfix_str(f"front {len(best)} trial(s), {items}")
        else:
            self.bar.set_postfix_str(items)
        if self.enabled:
            self.bar.write(line, file=sys.stderr)
        else:
            log.info(line)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def trial_line(trial: FrozenTrial, objectives: list[str]) -> str:
    attrs = trial.user_attrs
    what = attrs.get(A.BASELINE) or attrs.get(A.METHOD) or "?"
    head = f"#{trial.number:<4d} {what:<16s}"
    if trial.state == TrialState.FAIL:
        return f"{head} failed: {attrs.get('fail_reason', 'unknown')}"
    metrics = attrs.get(A.METRICS, {})
    scores = "  ".join(
        f"{o} {metrics[o]['search']:.4f}" for o in objectives if "search" in metrics.get(o, {})
    )
    if trial.state == TrialState.PRUNED:
        return f"{head} pruned after {attrs.get('stage')} items  {scores}"
    value = "  ".join(f"{v:.4f}" for v in trial.values or [])
    tail = (
        f"same config as #{attrs['duplicate_of']}"
        if A.DUPLICATE_OF in attrs
        else f"merge {attrs.get('merge_seconds', 0):.2f}s  eval {attrs.get('eval_seconds', 0):.2f}s"
        f"  {attrs.get(A.ITEMS, 0)} items"
    )
    return f"{head} value {value}  {scores}  {tail}"
