"""Samplers and pruners by name, and the wrapper that keeps baseline trials out of the model.

``make_sampler(spec, space, seed)`` and ``make_pruner(spec)`` are the only places that know
concrete Optuna classes; adding a sampler is adding one entry to ``SAMPLERS``.

Baseline trials (each source alone, the uniform average) are real trials of the study: they
show in every table and plot. But they are not points of the search space (they suggest no
parameters), and a completed trial without parameters would empty the intersection search
space that CMA-ES, GP and multivariate TPE model. ``HideBaselines`` therefore hands the inner
sampler a view of the study without them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from mergesearch.search.errors import SpecError
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.spec.schema import SearchSpec

log = logging.getLogger(__name__)

BASELINE_ATTR = "baseline"


def _cmaes(seed: int, options: dict[str, Any]) -> BaseSampler:
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise SpecError("sampler: cmaes needs the 'cmaes' package (pip install cmaes)") from None
    # A categorical `method` is sampled at random by CMA-ES's independent sampler, on purpose.
    options = {"warn_independent_sampling": False, **options}
    return optuna.samplers.CmaEsSampler(seed=seed, **options)


def _qmc(seed: int, options: dict[str, Any]) -> BaseSampler:
    options = {"scramble": True, "warn_independent_sampling": False, **options}
    with warnings.catch_warnings():  # "experimental" since Optuna 3.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, **options)


SAMPLERS: dict[str, Callable[[int, dict[str, Any]], BaseSampler]] = {
    "cmaes": _cmaes,
    "tpe": lambda seed, options: optuna.samplers.TPESampler(seed=seed, **options),
    "gp": lambda seed, options: optuna.samplers.GPSampler(seed=seed, **options),
    "nsga2": lambda seed, options: optuna.samplers.NSGAIISampler(seed=seed, **options),
    "random": lambda seed, options: optuna.samplers.RandomSampler(seed=seed, **options),
    "qmc": _qmc,
}


def resolve_sampler_name(spec: SearchSpec, space: SearchSpace) -> str:
    """``auto``: CMA-ES on a single objective whose searched space is numeric, else TPE."""
    name = spec.sampler.name
    if name != "auto":
        return name
    numeric = [
        d
        for d in space.distributions.values()
        if isinstance(d, FloatDistribution | IntDistribution)
    ]
    categorical = len(space.distributions) - len(numeric)
    if spec.combine == "weighted_sum" and len(numeric) >= 2 and categorical == 0:
        try:
            import cmaes  # noqa: F401

            return "cmaes"
        except ImportError:
            log.warning("sampler auto: the 'cmaes' package is not installed; using tpe")
    return "tpe"


def make_sampler(spec: SearchSpec, space: SearchSpace, seed: int) -> BaseSampler:
    name = resolve_sampler_name(spec, space)
    try:
        inner = SAMPLERS[name](seed, dict(spec.sampler.options))
    except TypeError as err:
        raise SpecError(f"{spec.source}: sampler.options: {err}") from None
    return HideBaselines(inner)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    name, options = spec.pruner.name, dict(spec.pruner.options)
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, **options})
        if name == "wilcoxon":
            with warnings.catch_warnings():  # "experimental" since Optuna 3.6; we pin the use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.pruners.WilcoxonPruner(**{"p_threshold": 0.1, **options})
        return optuna.pruners.NopPruner()
    except TypeError as err:
        raise SpecError(f"{spec.source}: pruner.options: {err}") from None


def is_baseline(trial: FrozenTrial) -> bool:
    return BASELINE_ATTR in trial.user_attrs


class _StudyView(optuna.Study):
    """The same study, as seen by a sampler: baseline trials left out."""

    def __init__(self, study: optuna.Study):  # no super().__init__: share the live state
        self.__dict__.update(study.__dict__)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = super()._get_trials(deepcopy, states, use_cache)
        return [t for t in trials if not is_baseline(t)]


class HideBaselines(BaseSampler):
    """Delegates to ``inner`` with a view of the study that has no baseline trials."""

    def __init__(self, inner: BaseSampler):
        self.inner = inner

    def __repr__(self) -> str:
        return f"HideBaselines({type(self.inner).__name__})"

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(_StudyView(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(_StudyView(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(
            _StudyView(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(_StudyView(study), trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(_StudyView(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
