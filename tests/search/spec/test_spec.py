"""Search specs: every shipped spec validates offline; bad specs fail in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergesearch.search.cli import user_error_exit_code
from mergesearch.search.errors import SpecError
from mergesearch.search.spec.load import load_spec
from mergesearch.search.spec.values import Fixed, PerModel, Range
from tests.helpers.specs import base_spec

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "configs" / "searches").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_specs_validate_without_downloading(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = load_spec(path)
    from mergesearch.search.optimize.space import SearchSpace

    space = SearchSpace(spec)
    assert space.distributions, "a shipped spec searches something"
    config = space.config({n: _middle(d) for n, d in space.distributions.items()})
    from mergesearch import merging

    merging.load_merge_config(config)  # the configs it makes are valid merge configs


def _middle(dist):
    if hasattr(dist, "choices"):
        return dist.choices[0]
    value = (dist.low + dist.high) / 2
    return int(value) if type(dist).__name__ == "IntDistribution" else value


def test_shipped_specs_include_demo_and_a_real_world_one():
    names = {p.name for p in SHIPPED}
    assert "demo.yaml" in names and len(names) >= 2


def test_parameter_values_parse():
    spec = load_spec(
        base_spec(
            parameters={
                "weight": {"a": {"low": 0, "high": 1}, "b": 1.0},
                "density": {"low": 0.1, "high": 0.9, "layer_groups": 3},
                "lambda": [1.0, 1.5],
                "normalize": False,
            }
        )
    )
    weight = spec.parameters["weight"]
    assert isinstance(weight, PerModel)
    assert weight.values["b"] == Fixed(value=1.0)
    assert isinstance(spec.parameters["density"], Range)
    assert spec.parameters["density"].layer_groups == 3
    assert spec.parameters["lambda"] == Fixed(value=(1.0, 1.5))
    assert spec.parameters["normalize"] == Fixed(value=False)


def test_defaults_and_shorthands():
    spec = load_spec(
        base_spec(
            sampler="tpe",
            pruner={"name": "median", "stages": [5, None]},
            budget={"trials": 3, "timeout": "2m"},
        )
    )
    assert spec.sampler.name == "tpe" and spec.sampler_seed == 0
    assert spec.budget.timeout == 120
    assert spec.objectives[0].name == "arc_easy"
    assert spec.objectives[0].metric_key("search") == "arc_easy/acc,none"
    assert spec.threads == 1


def test_overrides_apply_before_validation():
    spec = load_spec(base_spec(), n_trials=7, sampler="random", study_name="other", seed=3)
    assert (spec.budget.trials, spec.sampler.name, spec.name, spec.seed) == (
        7,
        "random",
        "other",
        3,
    )
    with pytest.raises(TypeError):
        load_spec(base_spec(), bogus=1)


ERRORS = [
    (dict(methods=["tie"]), "methods: unknown merge method 'tie' (did you mean 'ties'?)"),
    (
        dict(parameters={"weight": {"low": 2.0, "high": 1.0}}),
        "parameters.weight: range low 2 > high 1",
    ),
    (dict(objectives=None), "objectives: is required; list at least one objective"),
    ({"objectives": []}, "objectives: list at least one objective"),
    (
        dict(methods=["linear"], parameters={"weight": 1.0, "density": 0.5}),
        "parameters.density: none of the methods (linear) takes 'density'",
    ),
    (
        dict(methods={"ties": {"t": {"low": 0, "high": 1}}}),
        "methods.ties.t: merge method 'ties' does not take 't'",
    ),
    (dict(parameters={"density": 0.5}), "parameters.weight: merge method 'ties' needs 'weight'"),
    (dict(parameters={"weight": {"a": 1.0}}), "no value for model 'b'"),
    (
        dict(parameters={"weight": {"lo": 0, "high": 1}}),
        "unknown key 'lo' in a range (did you mean 'low'?)",
    ),
    (dict(samplr="tpe"), "samplr: unknown key (did you mean 'sampler'?)"),
    (dict(sampler="cma"), "sampler.name: 'cma' is not allowed"),
    (dict(pruner="median"), "pruner: median needs at least two stages"),
    (
        dict(
            combine="pareto",
            pruner={"name": "median", "stages": [5, None]},
            objectives=[{"task": "x", "metric": "m"}, {"task": "y", "metric": "m"}],
        ),
        "Optuna cannot prune multi-objective studies",
    ),
    (
        dict(
            combine="pareto",
            sampler="cmaes",
            objectives=[{"task": "x", "metric": "m"}, {"task": "y", "metric": "m"}],
        ),
        "sampler: cmaes searches one objective only; with combine: pareto use auto or one of",
    ),
    (dict(methods=["slerp"], parameters={}), "takes at most 1 model(s) besides the base"),
    (dict(methods=["passthrough"], parameters={}), "methods.passthrough.slices"),
    (dict(parameters={"weight": {"c": 1.0, "a": 1, "b": 1}}), "parameters.weight.c: unknown model"),
    (dict(parameters={"weight": 1.0, "lambda": {"a": 1.0}}), "'lambda' is a global parameter"),
]


@pytest.mark.parametrize(("changes", "expected"), ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_spec_errors_are_one_line(changes, expected, tmp_path):
    data = base_spec(**changes)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert user_error_exit_code(info.value) == 2


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such search spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(bad)
