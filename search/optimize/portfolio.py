"""``auto``: a portfolio over merge methods, with a model-based sampler for their parameters.

With ``method`` as one categorical dimension of a joint space, TPE commits to whichever method
looks good first and stays there, and CMA-ES draws the category at random. Yet methods differ
in kind (an average, a sparsified sum of task vectors, a spherical path), and each has a
landscape of its own. The portfolio therefore treats each method as an arm and its parameters
as that arm's own problem:

- **Warm-up**: every method gets ``warmup`` trials, the first at its default point (the
  method's defaults, equal weights, mid ranges), so each is seen where it usually works.
- **Successive halving over methods**, asynchronously: a method at rung ``k`` (it has had
  ``warmup * 2**k`` trials) may go on only while it is in the better half of the methods that
  reached that rung, compared on their best score within their first ``warmup * 2**k`` trials
  (equal effort, so a method is not favoured for having had more draws); the best of a few
  draws is noisy, so two methods go on until rung 2. The last survivor takes the rest.
- **Restarts**: when the leader's best has not moved for ``patience`` trials, the best of the
  others gets trials again, until it has had half as many as the leader or the leader moves.
- **Parameters**: by default each method has its own sampler (multivariate TPE), which sees
  only that method's trials and only the parameters it reads; parameters it ignores get fixed
  values, so merges that differ only there are recognised as duplicates rather than re-scored.
  With ``inner: shared-cmaes`` one CMA-ES draws every numeric parameter from the trials of all
  methods: methods share most parameters (each model's weight, density, ``lambda``), and at
  tens of trials no method has enough trials of its own to learn them. Ignored parameters
  then keep the values CMA-ES drew (its record of the trial); they never reach the merge
  config, so identical merges are still recognised by their config.

The allocation is a function of the trials in the storage (plus a system attribute that names
the method of each trial still running), so workers sharing a study agree on it and a resumed
study goes on where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from mergesearch.search import attrs as A
from mergesearch.search.optimize.experimental import quietly
from mergesearch.search.optimize.ranges import middle
from mergesearch.search.optimize.views import FilteredStudy, indexes_trials_by_number

METHOD_PARAM = "method"


@dataclass(frozen=True)
class InnerKind:
    """How the parameters inside the portfolio are drawn."""

    build: Callable[[int, int], BaseSampler]  # (seed, random start-up trials) -> sampler
    # one sampler for every method, over every numeric parameter, fed by all trials: what one
    # method's trials teach about a parameter several methods read (the models' weights,
    # densities, lambda) serves the others; otherwise each method has its own sampler over the
    # parameters it reads, fed by its own trials
    shared: bool


INNER_SAMPLERS: dict[str, InnerKind] = {
    "shared-cmaes": InnerKind(
        # a trial the pruner stopped early still says where the space is poor: its last
        # stage's score stands for its value
        lambda seed, startup: quietly(
            lambda: optuna.samplers.CmaEsSampler(
                seed=seed, warn_independent_sampling=False, consider_pruned_trials=True
            )
        ),
        shared=True,
    ),
    "tpe": InnerKind(
        lambda seed, startup: optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
        ),
        shared=False,
    ),
    "gp": InnerKind(
        lambda seed, startup: optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=startup, warn_independent_sampling=False
        ),
        shared=False,
    ),
    "random": InnerKind(
        lambda seed, startup: optuna.samplers.RandomSampler(seed=seed), shared=False
    ),
}

# One TPE per method. The shared CMA-ES ended nearer the best known merge on the shipped demo
# family and further from it on three specialists; over the suite the two are level
# (bench/RESULTS_efficacy.md, notes of 2026-12-06), so the default stays where it was.
DEFAULT_INNER = "tpe"


# --------------------------------------------------------------------------- allocation


@dataclass
class MethodRecord:
    """One method's trials in trial order: ``None`` for a trial without a final value
    (running, pruned, failed), else its value oriented so that larger is better."""

    name: str
    values: list[float | None] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    def best_within(self, count: int | None = None) -> float:
        scored = [v for v in self.values[:count] if v is not None]
        return max(scored) if scored else -math.inf

    def since_best(self) -> int:
        """Trials since the best value was set (all of them when there is none)."""
        best = self.best_within()
        if best == -math.inf:
            return self.n
        last = max(i for i, v in enumerate(self.values) if v == best)
        return self.n - 1 - last


def allocate(records: Sequence[MethodRecord], *, warmup: int, patience: int) -> str:
    """The method the next trial goes to. Pure: the same records give the same answer."""
    short = [r for r in records if r.n < warmup]
    if short:
        return min(short, key=lambda r: r.n).name

    def rung(record: MethodRecord) -> int:
        return math.floor(math.log2(record.n / warmup))

    def promotable(record: MethodRecord) -> bool:
        effort = warmup * 2 ** rung(record)
        peers = [r for r in records if r.n >= effort]
        ranked = sorted(peers, key=lambda r: r.best_within(effort), reverse=True)
        # the best of a few draws is noisy: two methods go on until both had 4 x warm-up
        keep = max(math.ceil(len(peers) / 2), 2 if rung(record) < 2 else 1)
        return record in ranked[:keep] and record.best_within(effort) > -math.inf

    leader = max(records, key=lambda r: (r.best_within(), r.n))
    if leader.since_best() >= max(patience, leader.n // 3):
        others = [r for r in records if r is not leader and r.n < leader.n // 2]
        if others:
            return max(others, key=lambda r: (r.best_within(), -r.n)).name
    candidates = [r for r in records if promotable(r)] or list(records)  # none scored yet
    return min(candidates, key=lambda r: (r.n, -r.best_within())).name


def warmup_for(budget: int | None, n_methods: int) -> int:
    """Warm-up trials per method: a quarter of the budget shared out, between 2 and 4."""
    if budget is None:
        return 4
    return max(2, min(4, budget // (4 * n_methods)))


# --------------------------------------------------------------------------- the sampler


class PortfolioSampler(BaseSampler):
    """A bandit over ``methods``; inside each, a sampler over the parameters it reads.

    ``used`` maps each method to the parameter names it reads, ``distributions`` is the whole
    (fixed-shape) space, ``defaults`` each method's default point. ``budget`` (search trials,
    baselines excluded) sizes the warm-up; ``inner`` names the per-method sampler.
    """

    def __init__(
        self,
        *,
        methods: Sequence[str],
        used: Mapping[str, Sequence[str]],
        distributions: Mapping[str, BaseDistribution],
        defaults: Mapping[str, Mapping[str, Any]],
        seed: int = 0,
        budget: int | None = None,
        inner: str = DEFAULT_INNER,
        warmup: int | None = None,
        patience: int | None = None,
        startup: int = 3,
        uniform: bool = False,
    ):
        if inner not in INNER_SAMPLERS:
            known = ", ".join(INNER_SAMPLERS)
            raise ValueError(f"inner sampler {inner!r} is not one of: {known}")
        self.methods = list(methods)
        self.used = {m: [p for p in used[m] if p != METHOD_PARAM] for m in self.methods}
        self.distributions = dict(distributions)
        self.defaults = {m: dict(defaults.get(m, {})) for m in self.methods}
        self.warmup = warmup or warmup_for(budget, len(self.methods))
        # uniform: every method gets the same share, whatever it scores (a reference for
        # long searches, where the question is how good each method can get)
        self.uniform = uniform
        self.patience = patience or 4 * self.warmup
        self._seed = seed
        kind = INNER_SAMPLERS[inner]
        self.shared = kind.shared
        numeric = {
            p: d
            for p, d in self.distributions.items()
            if not isinstance(d, optuna.distributions.CategoricalDistribution)
        }
        if self.shared:
            one = kind.build(seed, startup)
            self._inner = {m: one for m in self.methods}
            self._spaces = {m: numeric for m in self.methods}
        else:
            self._inner = {
                m: kind.build(seed + 1009 * i, startup) for i, m in enumerate(self.methods)
            }
            self._spaces = {
                m: {p: self.distributions[p] for p in self.used[m]} for m in self.methods
            }
        self._chosen: dict[int, str] = {}  # trial id -> method, for trials of this process

    def __repr__(self) -> str:
        return f"PortfolioSampler({len(self.methods)} methods, warmup {self.warmup})"

    # ---------------------------------------------------------------- which method

    def method_of(self, trial: FrozenTrial) -> str | None:
        if METHOD_PARAM in trial.params:
            return trial.params[METHOD_PARAM]
        return self._chosen.get(trial._trial_id) or trial.system_attrs.get(A.PORTFOLIO_METHOD)

    def records(self, study: optuna.Study) -> list[MethodRecord]:
        records = {m: MethodRecord(m) for m in self.methods}
        sign = -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0
        for trial in study._get_trials(deepcopy=False, use_cache=True):
            method = self.method_of(trial)
            if method not in records or trial.state == TrialState.WAITING:
                continue
            done = trial.state == TrialState.COMPLETE and trial.value is not None
            records[method].values.append(sign * trial.value if done else None)
        return [records[m] for m in self.methods]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        fixed = trial.system_attrs.get(A.FIXED_PARAMS, {})
        method = fixed.get(METHOD_PARAM) or self._allocate(study)
        self._chosen[trial._trial_id] = method
        study._storage.set_trial_system_attr(trial._trial_id, A.PORTFOLIO_METHOD, method)

    def _allocate(self, study: optuna.Study) -> str:
        records = self.records(study)
        if self.uniform:
            return min(records, key=lambda r: r.n).name
        return allocate(records, warmup=self.warmup, patience=self.patience)

    def _view(self, study: optuna.Study, method: str) -> optuna.Study:
        if self.shared:
            return study
        return FilteredStudy(
            study,
            lambda t: self.method_of(t) == method,
            renumber=indexes_trials_by_number(self._inner[method]),
        )

    def _method(self, study: optuna.Study, trial: FrozenTrial) -> str:
        method = self.method_of(trial)
        if method is None:  # before_trial ran in no process of ours: decide now
            method = self._allocate(study)
            self._chosen[trial._trial_id] = method
        return method

    # ---------------------------------------------------------------- parameters

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._spaces[self._method(study, trial)])

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        method = self._method(study, trial)
        view = self._view(study, method)
        earlier = [
            t
            for t in view._get_trials(deepcopy=False)
            if t._trial_id != trial._trial_id and self.method_of(t) == method
        ]
        if not earlier:  # a method's first trial: its default point
            return {p: v for p, v in self.defaults[method].items() if p in search_space}
        return self._inner[method].sample_relative(view, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        method = self._method(study, trial)
        if param_name == METHOD_PARAM:
            return method
        if param_name in self.used[method]:
            view = self._view(study, method)
            return self._inner[method].sample_independent(
                view, trial, param_name, param_distribution
            )
        return fixed_value(param_distribution)  # a parameter this method ignores

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        method = self.method_of(trial)
        if method in self._inner:
            self._inner[method].after_trial(self._view(study, method), trial, state, values)
        self._chosen.pop(trial._trial_id, None)

    def reseed_rng(self) -> None:
        for sampler in dict.fromkeys(self._inner.values()):
            sampler.reseed_rng()


def fixed_value(distribution: BaseDistribution) -> Any:
    """A stable value for a parameter that does not matter: the first choice or the middle."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return distribution.choices[0]
    return middle(distribution)
