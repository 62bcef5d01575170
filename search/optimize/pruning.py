"""Multi-fidelity: a candidate is first scored on a few items per task, and only the promising
ones are scored on the rest.

``StageHalvingPruner`` keeps, at every stage but the last, the best ``keep`` fraction of all
trials that reached that stage (finished, pruned or still running), as successive halving does.
Comparing against every trial that got as far, not only the finished ones, keeps the bar where
it is as the search narrows: a pruner that compares only against survivors lets more through
the better the survivors are. At real model sizes evaluation is most of a trial's cost, so
pruning saves the items a weak candidate would have used.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

REACHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class StageHalvingPruner(BasePruner):
    """Prune unless the trial ranks in the best ``keep`` of the trials that reached its stage;
    never before ``min_trials`` others have reached it."""

    def __init__(self, keep: float = 1 / 3, min_trials: int = 8):
        if not 0 < keep < 1:
            raise ValueError(f"halving: keep must lie in (0, 1), got {keep}")
        if min_trials < 1:
            raise ValueError(f"halving: min_trials must be >= 1, got {min_trials}")
        self.keep, self.min_trials = keep, min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=REACHED)
            if t.number != trial.number and step in t.intermediate_values
        ]
        others = [v for v in others if not math.isnan(v)]
        if math.isnan(value):
            return True
        if len(others) < self.min_trials:
            return False
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        better = sum(sign * v > sign * value for v in others)
        return better >= self.keep * (len(others) + 1)
