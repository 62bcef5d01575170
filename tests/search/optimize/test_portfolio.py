"""The ``auto`` strategy: a bandit over merge methods with a sampler inside each method."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from mergesearch.search import attrs as A
from mergesearch.search import run_search
from mergesearch.search.optimize.portfolio import MethodRecord, PortfolioSampler, allocate
from tests.helpers import probe
from tests.helpers.specs import make_spec

# ---------------------------------------------------------------------- allocation (pure)


def play(means: dict[str, float], trials: int, *, warmup: int = 2, patience: int = 8):
    """Allocate ``trials`` trials; a method's n-th trial scores its mean plus a small rise."""
    records = [MethodRecord(name) for name in means]
    order = []
    for _ in range(trials):
        name = allocate(records, warmup=warmup, patience=patience)
        record = next(r for r in records if r.name == name)
        record.values.append(means[name] + 0.001 * record.n)
        order.append(name)
    return order, {r.name: r.n for r in records}


def test_every_method_gets_its_warmup_before_any_gets_more():
    order, _ = play({"a": 0.1, "b": 0.5, "c": 0.3}, 9, warmup=3)
    assert sorted(order[:9]) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_the_worse_half_stops_at_each_rung_and_the_leader_takes_the_rest():
    order, counts = play({"a": 0.1, "b": 0.5, "c": 0.3}, 40, warmup=2, patience=1000)
    assert counts["a"] == 2  # last at rung 0: only its warm-up
    assert counts["c"] == 8  # two go on until rung 2 (4 x warm-up), then only the best
    assert counts["b"] == 30
    assert order[-10:] == ["b"] * 10


def test_a_stalled_leader_lets_the_runner_up_try_again():
    records = [MethodRecord("lead", [0.9] * 3 + [0.5] * 20), MethodRecord("next", [0.8] * 8)]
    assert allocate(records, warmup=2, patience=8) == "next"
    records[0].values.append(0.95)  # the leader moves: it goes on
    assert allocate(records, warmup=2, patience=8) == "lead"


def test_a_method_that_always_fails_gets_only_its_warmup():
    records = [MethodRecord("broken", [None, None]), MethodRecord("ok", [0.2, 0.3])]
    picks = set()
    for _ in range(20):
        name = allocate(records, warmup=2, patience=100)
        picks.add(name)
        next(r for r in records if r.name == name).values.append(0.3 if name == "ok" else None)
    assert picks == {"ok"}
    assert records[1].best_within() == 0.3
    assert records[0].best_within() == -math.inf


# ---------------------------------------------------------------------- inside real searches


def _by_method(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list] = {}
    for trial in study.get_trials(deepcopy=False):
        if A.BASELINE in trial.user_attrs:
            continue
        out.setdefault(trial.params["method"], []).append(trial)
    return out


def test_auto_gives_each_method_its_default_point_first(family, tmp_path):
    spec = make_spec(family, tmp_path, sampler={"name": "auto", "seed": 3}, budget={"trials": 20})
    result = run_search(spec, progress=False, heldout=False)
    assert "PortfolioSampler" in repr(result.study.sampler)
    methods = _by_method(result.study)
    assert set(methods) == {"ties", "linear"}
    assert all(len(trials) >= 2 for trials in methods.values())
    first_ties = methods["ties"][0].params
    # ties' own default lambda (1.0) and density (1.0) inside the ranges; equal weights summing to one
    assert first_ties["lambda"] == 1.0
    assert first_ties["density.a"] == first_ties["density.b"] == 1.0
    assert first_ties["weight.a"] == first_ties["weight.b"] == pytest.approx(0.5)
    # the method each trial was given is recorded for the other workers
    assert all(t.system_attrs[A.PORTFOLIO_METHOD] == m for m, ts in methods.items() for t in ts)


@pytest.mark.parametrize("inner", ["tpe", "shared-cmaes"])
def test_parameters_a_method_ignores_stay_out_of_its_merges(family, tmp_path, inner):
    """Whatever values they carry, parameters linear does not read never reach its configs; a
    sampler per method holds them fixed, the shared one keeps what it drew (its own model of
    the trial), so identical merges are recognised by their config."""
    spec = make_spec(
        family,
        tmp_path,
        sampler={"name": "auto", "options": {"inner": inner}},
        budget={"trials": 16},
    )
    study = run_search(spec, progress=False, heldout=False).study
    linear = _by_method(study)["linear"]
    assert all("density" not in t.user_attrs[A.MERGE_CONFIG] for t in linear)
    assert all("lambda" not in t.user_attrs[A.MERGE_CONFIG] for t in linear)
    ignored = {(t.params["density.a"], t.params["lambda"]) for t in linear}
    assert len(ignored) == 1 if inner == "tpe" else len(ignored) > 1


def test_a_spec_with_one_method_behaves_like_a_plain_sampler(family, tmp_path):
    studies = {}
    for name in ("auto", "cmaes"):
        spec = make_spec(
            family,
            tmp_path / name,
            methods=["ties"],
            sampler={"name": name, "seed": 5},
            budget={"trials": 10},
        )
        (tmp_path / name).mkdir()
        studies[name] = run_search(spec, progress=False, heldout=False).study
    params = {n: [t.params for t in s.trials if t.params] for n, s in studies.items()}
    assert params["auto"] == params["cmaes"]
    assert "PortfolioSampler" not in repr(studies["auto"].sampler)


@pytest.mark.parametrize("inner", ["tpe", "shared-cmaes"])
def test_a_resumed_study_goes_on_with_the_allocation_it_had(family, tmp_path, inner):
    spec = make_spec(
        family,
        tmp_path,
        sampler={"name": "auto", "options": {"inner": inner}},
        budget={"trials": 24},
    )
    probe.INTERRUPT_ON_CALL = 12
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, progress=False, heldout=False)
    probe.INTERRUPT_ON_CALL = None
    study = run_search(spec, progress=False, heldout=False).study
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 24
    methods = _by_method(study)
    # each method's default point was tried once: the resumed run did not warm up again
    for trials in methods.values():
        firsts = [t for t in trials if t.params == trials[0].params]
        assert len(firsts) == 1
    finished = [t for ts in methods.values() for t in ts if t.state == TrialState.COMPLETE]
    assert len(finished) == 20  # 24 minus 4 baselines


def test_portfolio_refuses_an_unknown_inner_sampler():
    with pytest.raises(ValueError, match="inner sampler 'nope'"):
        PortfolioSampler(methods=["a"], used={"a": []}, distributions={}, defaults={}, inner="nope")


def _share_study(inner: str) -> list[float]:
    """Two methods read one parameter ``x``; only ``lead``'s score depends on it (best at
    x = 0.8), ``rare`` scores the same wherever it is. Returns ``rare``'s last ten x values."""
    distributions = {
        "method": optuna.distributions.CategoricalDistribution(["lead", "rare"]),
        "x": optuna.distributions.FloatDistribution(0.0, 1.0),
    }
    sampler = PortfolioSampler(
        methods=["lead", "rare"],
        used={"lead": ["x"], "rare": ["x"]},
        distributions=distributions,
        defaults={"lead": {"x": 0.5}, "rare": {"x": 0.5}},
        seed=0,
        inner=inner,
        uniform=True,
    )
    study = optuna.create_study(sampler=sampler, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        method = trial.suggest_categorical("method", ["lead", "rare"])
        x = trial.suggest_float("x", 0.0, 1.0)
        return 1.0 - (x - 0.8) ** 2 if method == "lead" else 0.5

    study.optimize(objective, n_trials=80)
    return [t.params["x"] for t in study.trials if t.params["method"] == "rare"][-10:]


def test_a_shared_inner_sampler_carries_what_one_method_learns_to_the_others():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = _share_study("shared-cmaes")
    alone = _share_study("random")  # each method on its own: rare learns nothing about x
    distance = {n: sum(abs(x - 0.8) for x in xs) / 10 for n, xs in [("s", shared), ("a", alone)]}
    assert distance["s"] < 0.1, shared
    assert distance["a"] > 2 * distance["s"], (shared, alone)
