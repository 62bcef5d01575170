"""Naming the base source, and what a method that merges a base with one model asks for."""

from __future__ import annotations

import pytest

from mergesearch.search.errors import SpecError
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.spec.load import load_spec
from tests.helpers.specs import base_spec


def _slerp(sources: dict) -> dict:
    return base_spec(
        methods=["slerp"], parameters={"t": {"low": 0.0, "high": 1.0}}, sources=sources
    )


def test_the_base_can_be_named_and_keeps_its_name_everywhere():
    spec = load_spec(_slerp({"base": {"start": "org/base"}, "models": {"end": "org/end"}}))
    assert spec.sources.names() == ["start", "end"]
    assert spec.sources.path("start") == "org/base"
    space = SearchSpace(spec)
    assert list(space.baselines()) == ["start", "end"]  # one model: no average to compare
    assert space.base_of("slerp") == "start"
    config = space.config({"t": 0.25})
    assert config["base_model"] == "org/base" and config["parameters"] == {"t": 0.25}


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        (
            {"base": "org/base", "models": {"a": "org/a", "b": "org/b"}},
            "slerp merges its t=0 end (sources.base) with one model: move one model to "
            "sources.base",
        ),
        (
            {"models": {"a": "org/a", "b": "org/b", "c": "org/c"}},
            "put one of them under sources.base (a mapping {name: PATH} names it)",
        ),
        (
            {"models": {"a": "org/a"}},
            "needs a base model (t=0 end); give sources.base: PATH (or {name: PATH} to name it)",
        ),
        ({"base": {"a": "org/base"}, "models": {"a": "org/a"}}, "is also a model name"),
        ({"base": {"x": "org/x", "y": "org/y"}, "models": {"a": "org/a"}}, "one name: path"),
    ],
    ids=["base-and-two", "three-no-base", "one-no-base", "name-clash", "two-bases"],
)
def test_slerp_errors_say_what_to_put_under_sources_base(sources, expected):
    with pytest.raises(SpecError) as err:
        load_spec(_slerp(sources))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
