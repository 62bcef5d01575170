"""A study as one sampler should see it: the same live study, some trials left out.

Samplers read a study's history through ``Study._get_trials``; a view overrides only that, so
the sampler gets everything else (storage, directions, system attributes) of the real study.
The baseline wrapper hides baseline trials (they suggest no parameters); the method portfolio
shows each method's sampler only that method's trials.

Genetic samplers (NSGA-II/III) index the trial list by trial number: they assume the trial
numbered ``n`` sits at position ``n``. A view that leaves trials out breaks that, so for them
the view renumbers what it keeps, 0, 1, 2, ... in study order (on copies; the study's own trials
are untouched). Other samplers keep the real numbers: TPE's constant liar, for one, finds the
trial being sampled among the others by its number.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container

import optuna
from optuna.trial import FrozenTrial, TrialState


def indexes_trials_by_number(sampler: optuna.samplers.BaseSampler) -> bool:
    """Whether ``sampler`` looks trials up as ``trials[trial.number]`` (Optuna's genetic samplers,
    recognised by the generation bookkeeping they all share)."""
    return hasattr(sampler, "get_trial_generation")


class FilteredStudy(optuna.Study):
    """``study`` with only the trials for which ``keep`` is true; with ``renumber`` the kept
    trials are numbered by their position among all kept trials, whatever ``states`` asks for."""

    def __init__(
        self, study: optuna.Study, keep: Callable[[FrozenTrial], bool], renumber: bool = False
    ):
        self.__dict__.update(study.__dict__)  # share the live state, no super().__init__
        self._wrapped, self._keep, self._renumber = study, keep, renumber

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        if not self._renumber:
            trials = self._wrapped._get_trials(deepcopy, states, use_cache)
            return [t for t in trials if self._keep(t)]
        everything = self._wrapped._get_trials(deepcopy, None, use_cache)
        kept = []
        for position, trial in enumerate(t for t in everything if self._keep(t)):
            if states is None or trial.state in states:
                kept.append(_numbered(trial, position))
        return kept


def _numbered(trial: FrozenTrial, number: int) -> FrozenTrial:
    if trial.number == number:
        return trial
    renumbered = copy.copy(trial)
    renumbered.number = number
    return renumbered
