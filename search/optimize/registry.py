"""Samplers and pruners by name: one table per kind, each entry a factory and what it can do.

The spec validates ``sampler:`` and ``pruner:`` against these tables, the CLI offers their
names, and ``samplers.make_sampler`` / ``make_pruner`` build from them: adding a sampler or a
pruner is adding one entry here, and no code compares against a name. Factories take plain data
(``Problem``), never the spec, because the spec schema imports this module.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from mergesearch.search.optimize.experimental import quietly
from mergesearch.search.optimize.portfolio import PortfolioSampler
from mergesearch.search.optimize.pruning import StageHalvingPruner

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Problem:
    """What a sampler may know of the search it serves."""

    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    multi_objective: bool = False
    methods: Sequence[str] = ()
    # method -> the parameters it reads; parameter -> distribution; method -> its default point
    used: Mapping[str, Sequence[str]] = field(default_factory=dict)
    distributions: Mapping[str, BaseDistribution] = field(default_factory=dict)
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    budget: int | None = None  # search trials, baselines excluded

    @property
    def numeric(self) -> int:
        return sum(
            isinstance(d, FloatDistribution | IntDistribution) for d in self.distributions.values()
        )

    @property
    def categorical(self) -> int:
        return len(self.distributions) - self.numeric


@dataclass(frozen=True)
class SamplerEntry:
    build: Callable[[Problem], BaseSampler]
    # models categorical dimensions (the method choice); otherwise it draws them at random
    categorical: bool
    multi_objective: bool  # can search ``combine: pareto``
    package: str | None = None  # an optional package it needs
    # when ``auto`` picks it; ``auto`` tries the entries in table order
    auto_when: Callable[[Problem], bool] | None = None
    # what it is, in words, for reports and model cards ("found by ...")
    title: str = ""

    def available(self) -> bool:
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def fits(self, p: Problem) -> bool:
        """Whether it models everything ``p`` has: its objectives and its kinds of dimension."""
        return (self.multi_objective or not p.multi_objective) and (
            self.categorical or p.categorical == 0
        )


@dataclass(frozen=True)
class PrunerEntry:
    build: Callable[[Mapping[str, Any]], BasePruner]
    prunes: bool  # scores in stages and may stop a trial early (needs two stages or more)
    per_item: bool = False  # compares per-item scores, not stage means


def _portfolio(p: Problem) -> BaseSampler:
    return PortfolioSampler(
        methods=p.methods,
        used=p.used,
        distributions=p.distributions,
        defaults=p.defaults,
        seed=p.seed,
        budget=p.budget,
        **p.options,
    )


def _general(
    sampler: Callable[..., BaseSampler],
    title: str,
    auto_when: Callable[[Problem], bool] | None = None,
) -> SamplerEntry:
    """An Optuna sampler that models every kind of dimension and several objectives, built
    from the seed and the spec's options alone."""
    return SamplerEntry(
        lambda p: sampler(seed=p.seed, **p.options),
        categorical=True,
        multi_objective=True,
        auto_when=auto_when,
        title=title,
    )


SAMPLERS: dict[str, SamplerEntry] = {
    "portfolio": SamplerEntry(
        _portfolio,
        categorical=True,
        multi_objective=False,
        auto_when=lambda p: len(p.methods) > 1,
        title="a portfolio over merge methods (successive halving, a model of their parameters)",
    ),
    "cmaes": SamplerEntry(
        lambda p: optuna.samplers.CmaEsSampler(
            # the independent sampler draws a categorical dimension at random, on purpose
            seed=p.seed,
            **{"warn_independent_sampling": False, **p.options},
        ),
        categorical=False,
        multi_objective=False,
        package="cmaes",
        auto_when=lambda p: p.numeric >= 2,
        title="CMA-ES (an evolution strategy)",
    ),
    "tpe": _general(
        optuna.samplers.TPESampler,
        "TPE (tree-structured Parzen estimator, Bayesian optimisation)",
        auto_when=lambda p: True,
    ),
    "gp": _general(optuna.samplers.GPSampler, "Gaussian-process Bayesian optimisation"),
    "nsga2": _general(
        optuna.samplers.NSGAIISampler, "NSGA-II (a multi-objective evolutionary algorithm)"
    ),
    "random": _general(optuna.samplers.RandomSampler, "random search"),
    "qmc": SamplerEntry(
        lambda p: quietly(
            lambda: optuna.samplers.QMCSampler(
                seed=p.seed,
                **{"scramble": True, "warn_independent_sampling": False, **p.options},
            )
        ),
        categorical=False,
        multi_objective=True,
        title="quasi-Monte Carlo sampling (scrambled Sobol points)",
    ),
}
SAMPLER_NAMES = (AUTO, *SAMPLERS)  # what a spec or --sampler may name

PRUNERS: dict[str, PrunerEntry] = {
    "none": PrunerEntry(
        lambda options: optuna.pruners.NopPruner(),  # options of a pruner it overrides
        prunes=False,
    ),
    "halving": PrunerEntry(
        lambda options: StageHalvingPruner(**options),
        prunes=True,
    ),
    "median": PrunerEntry(
        lambda options: optuna.pruners.MedianPruner(**{"n_startup_trials": 5, **options}),
        prunes=True,
    ),
    "wilcoxon": PrunerEntry(
        lambda options: quietly(
            lambda: optuna.pruners.WilcoxonPruner(**{"p_threshold": 0.1, **options})
        ),
        prunes=True,
        per_item=True,
    ),
}

PRUNER_NAMES = tuple(PRUNERS)


def auto_sampler(problem: Problem) -> str:
    """What ``auto`` means for ``problem``: the first entry that fits it, whose ``auto_when``
    holds and whose package is installed."""
    for name, entry in SAMPLERS.items():
        if entry.auto_when is None or not entry.fits(problem) or not entry.auto_when(problem):
            continue
        if entry.available():
            return name
        log.warning("sampler auto: %s needs the %r package, not installed", name, entry.package)
    raise AssertionError("the sampler table has no catch-all auto entry")  # tpe always fits
