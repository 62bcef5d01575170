"""The seven newer mergekit methods in a search spec: their parameters become search ranges like
any other method's, and every point of the space is a merge config the engine accepts."""

from __future__ import annotations

import pytest

from mergesearch import merging
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.spec.load import load_spec
from tests.helpers.specs import base_spec

ONE_MODEL = {"base": "org/base", "models": {"a": "org/a"}}
# method: (its parameters as ranges, sources when not the default base + a + b)
SEARCHED = {
    "multislerp": ({"weight": {"low": 0.1, "high": 1.0}, "normalize_weights": True}, None),
    "karcher": (
        {
            "max_iter": {"low": 0, "high": 10, "step": 1},
            "tol": {"low": 1e-7, "high": 1e-3, "log": True},
        },
        None,
    ),
    "sce": ({"select_topk": {"low": 0.1, "high": 1.0}}, None),
    "nearswap": ({"t": {"low": 1e-4, "high": 1e-2, "log": True}}, ONE_MODEL),
    "arcee_fusion": ({}, ONE_MODEL),
    "ram": ({"epsilon": {"low": 1e-6, "high": 1e-3, "log": True}}, None),
    "ramplus_tl": (
        {
            "epsilon": {"low": 1e-6, "high": 1e-3, "log": True},
            "r": {"low": 0.0, "high": 1.0},
            "alpha": {"low": 0.0, "high": 1.0},
        },
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(SEARCHED))
def test_newer_method_parameters_are_searched_and_make_valid_configs(name):
    parameters, sources = SEARCHED[name]
    changes = {"methods": [name], "parameters": parameters}
    if sources:
        changes["sources"] = sources
    space = SearchSpace(load_spec(base_spec(**changes)))
    searched = {p for p, v in parameters.items() if isinstance(v, dict)}
    per_model = set(merging.METHODS[name].per_model_params)
    expected = {p for p in searched if p not in per_model}
    expected |= {f"{p}.{m}" for p in searched & per_model for m in ("a", "b")}
    assert set(space.distributions) == expected
    corners = [{n: d.high for n, d in space.distributions.items()}]  # every parameter high
    corners += [  # one parameter low
        {n: d.low if d is low else d.high for n, d in space.distributions.items()}
        for low in space.distributions.values()
    ]
    for params in corners:
        config = space.config(params)
        assert config["merge_method"] == name
        merging.load_merge_config(config)


def test_required_parameters_of_newer_methods_must_be_given():
    with pytest.raises(SpecError, match="'weight'"):
        load_spec(base_spec(methods=["multislerp"], parameters={}))
    with pytest.raises(SpecError, match="'t'"):
        load_spec(base_spec(methods=["nearswap"], parameters={}, sources=ONE_MODEL))
    with pytest.raises(SpecError, match="at most 1"):
        load_spec(base_spec(methods=["arcee_fusion"], parameters={}))
