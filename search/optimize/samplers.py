"""The spec's sampler and pruner, built from the registry, and the wrapper that keeps baseline
trials out of the sampler's model.

``make_sampler(spec, space, seed)`` and ``make_pruner(spec)`` hand the registry
(``search.optimize.registry``) plain data from the spec and the space; the registry is the only
place that knows concrete Optuna classes.

Baseline trials (each source alone, the uniform average) are real trials of the study: they
show in every table and plot. But they are not points of the search space (they suggest no
parameters), and a completed trial without parameters would empty the intersection search
space that CMA-ES, GP and multivariate TPE model. ``HideBaselines`` therefore hands the inner
sampler a view of the study without them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from mergesearch.search import attrs as A
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize import versions
from mergesearch.search.optimize.registry import AUTO, PRUNERS, SAMPLERS, Problem, auto_sampler
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.optimize.views import FilteredStudy, indexes_trials_by_number
from mergesearch.search.spec.schema import SearchSpec

log = logging.getLogger(__name__)


def _problem(spec: SearchSpec, space: SearchSpace, seed: int, budget: int | None = None) -> Problem:
    return Problem(
        seed=seed,
        options=dict(spec.sampler.options),
        multi_objective=spec.combine == "pareto",
        methods=tuple(space.methods),
        used=space.used,
        distributions=space.distributions,
        defaults={m: space.default_point(m) for m in space.methods},
        budget=budget,
    )


def resolve_sampler_name(spec: SearchSpec, space: SearchSpace) -> str:
    """The sampler the spec names, or what ``auto`` means for this space (see the registry)."""
    name = spec.sampler.name
    return auto_sampler(_problem(spec, space, spec.sampler_seed)) if name == AUTO else name


def make_sampler(
    spec: SearchSpec, space: SearchSpace, seed: int, *, search_budget: int | None = None
) -> BaseSampler:
    """The spec's sampler, baselines hidden from it. ``search_budget`` (trials that are not
    baselines) sizes the portfolio's warm-up."""
    problem = _problem(spec, space, seed, search_budget)
    name = spec.sampler.name
    entry = SAMPLERS[auto_sampler(problem) if name == AUTO else name]
    if not entry.available():
        raise SpecError(
            f"{spec.source}: sampler: {name} needs the {entry.package!r} package "
            f"(pip install {entry.package})"
        )
    try:
        inner = entry.build(problem)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{spec.source}: sampler.options: {err}") from None
    return HideBaselines(inner)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    try:
        return PRUNERS[spec.pruner.name].build(dict(spec.pruner.options))
    except (TypeError, ValueError) as err:
        raise SpecError(f"{spec.source}: pruner.options: {err}") from None


def is_baseline(trial: FrozenTrial) -> bool:
    return A.BASELINE in trial.user_attrs


def _without_baselines(study: optuna.Study, sampler: BaseSampler) -> optuna.Study:
    """The trials a sampler learns from: no baselines, and only those scored under the study's
    current spec version (after ``--allow-spec-change`` older scores measured another thing)."""
    latest = versions.current(study)
    return FilteredStudy(
        study,
        lambda trial: not is_baseline(trial) and versions.version_of(trial) == latest,
        renumber=indexes_trials_by_number(sampler),
    )


class HideBaselines(BaseSampler):
    """Delegates to ``inner`` with a view of the study that has no baseline trials."""

    def __init__(self, inner: BaseSampler):
        self.inner = inner

    def __repr__(self) -> str:
        return f"HideBaselines({type(self.inner).__name__})"

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(_without_baselines(study, self.inner), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(
            _without_baselines(study, self.inner), trial, search_space
        )

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(
            _without_baselines(study, self.inner), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(_without_baselines(study, self.inner), trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(_without_baselines(study, self.inner), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
