"""The sampler and pruner tables: what ``auto`` picks for a search, which pruners prune."""

from __future__ import annotations

from optuna.distributions import CategoricalDistribution, FloatDistribution

from mergesearch.search.optimize.registry import PRUNERS, SAMPLERS, Problem, auto_sampler


def test_auto_sampler_follows_the_registry_table():
    numeric = {n: FloatDistribution(0, 1) for n in ("weight.a", "weight.b")}
    methods = {"method": CategoricalDistribution(["ties", "linear"])}
    assert auto_sampler(Problem(seed=0, methods=("ties", "linear"), distributions=methods)) == (
        "portfolio"
    )
    cmaes = "cmaes" if SAMPLERS["cmaes"].available() else "tpe"
    assert auto_sampler(Problem(seed=0, methods=("ties",), distributions=numeric)) == cmaes
    pareto = Problem(seed=0, multi_objective=True, methods=("ties",), distributions=numeric)
    assert auto_sampler(pareto) == "tpe"  # neither the portfolio nor CMA-ES serves a Pareto front
    one = Problem(seed=0, methods=("ties",), distributions={"weight.a": FloatDistribution(0, 1)})
    assert auto_sampler(one) == "tpe"


def test_every_pruner_but_none_prunes_in_stages():
    assert {name for name, entry in PRUNERS.items() if not entry.prunes} == {"none"}
    assert [name for name, entry in PRUNERS.items() if entry.per_item] == ["wilcoxon"]
