"""A study as one sampler should see it: the same live study, some trials left out.

Samplers read a study's history through ``Study._get_trials``; a view overrides only that, so
the sampler gets everything else (storage, directions, system attributes) of the real study.
The baseline wrapper hides baseline trials (they suggest no parameters); the method portfolio
shows each method's sampler only that method's trials.
"""

from __future__ import annotations

from collections.abc import Callable, Container

import optuna
from optuna.trial import FrozenTrial, TrialState


class FilteredStudy(optuna.Study):
    """``study`` with only the trials for which ``keep`` is true."""

    def __init__(self, study: optuna.Study, keep: Callable[[FrozenTrial], bool]):
        self.__dict__.update(study.__dict__)  # share the live state, no super().__init__
        self._wrapped, self._keep = study, keep

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._wrapped._get_trials(deepcopy, states, use_cache)
        return [t for t in trials if self._keep(t)]
