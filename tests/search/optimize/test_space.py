"""Search space: parameter names, fixed shape, configs built from parameters, baselines."""

from __future__ import annotations

from mergesearch import merging
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.spec.load import load_spec
from tests.helpers.specs import base_spec


def space_of(**changes) -> SearchSpace:
    return SearchSpace(load_spec(base_spec(**changes)))


def test_names_and_fixed_shape_across_methods():
    space = space_of(
        methods={"ties": {"lambda": {"low": 1.0, "high": 2.0}}, "linear": None},
        parameters={"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.1, "high": 0.9}},
    )
    assert set(space.distributions) == {
        "method",
        "weight.a",
        "weight.b",
        "density.a",
        "density.b",
        "ties.lambda",
    }
    params = {name: 0.5 for name in space.distributions} | {"method": "linear"}
    config = space.config(params)
    assert config == {
        "models": [
            {"model": "org/a", "parameters": {"weight": 0.5}},
            {"model": "org/b", "parameters": {"weight": 0.5}},
        ],
        "merge_method": "linear",
        "dtype": "float32",
    }
    ties = space.config(params | {"method": "ties", "ties.lambda": 1.23456789})
    assert ties["base_model"] == "org/base"
    assert ties["parameters"] == {"lambda": 1.235}  # 4 significant digits
    assert ties["models"][0]["parameters"] == {"weight": 0.5, "density": 0.5}
    merging.load_merge_config(ties)


def test_layer_groups_and_filters_make_gradients_and_filter_lists():
    space = space_of(
        parameters={
            "weight": {"low": 0.0, "high": 1.0, "layer_groups": 3},
            "density": {"low": 0.1, "high": 0.9, "filters": ["self_attn", "mlp"]},
            "lambda": 1.0,
        }
    )
    assert {"weight.a.g0", "weight.a.g2", "density.b.self_attn", "density.b.rest"} <= set(
        space.distributions
    )
    params = {name: 0.25 for name in space.distributions}
    params["weight.a.g1"] = 0.75
    config = space.config(params)
    a = config["models"][0]["parameters"]
    assert a["weight"] == [0.25, 0.75, 0.25]
    assert a["density"] == [
        {"filter": "self_attn", "value": 0.25},
        {"filter": "mlp", "value": 0.25},
        {"value": 0.25},
    ]
    assert config["parameters"] == {"lambda": 1.0}
    merging.load_merge_config(config)


def test_per_model_ranges_and_fixed_values():
    space = space_of(parameters={"weight": {"a": {"low": 0.2, "high": 0.4}, "b": 1.0}})
    assert set(space.distributions) == {"weight.a"}
    config = space.config({"weight.a": 0.3})
    assert [m["parameters"] for m in config["models"]] == [
        {"weight": 0.3},
        {"weight": 1.0},
    ]


def test_random_methods_carry_the_seed():
    space = space_of(methods=["dare_ties"], seed=7)
    assert space.config({"weight.a": 0.5, "weight.b": 0.5})["seed"] == 7
    assert "seed" not in space_of(seed=7).config({"weight.a": 0.5, "weight.b": 0.5})


def test_passthrough_slices_are_searched_and_clamped():
    spec = load_spec(
        base_spec(
            methods={
                "passthrough": {
                    "slices": [
                        {
                            "source": {"choices": ["a", "b"]},
                            "start": 0,
                            "length": {"low": 1, "high": 4},
                        },
                        {"source": "base", "start": {"low": 0, "high": 3}, "length": 2},
                    ]
                }
            },
            parameters={},
        )
    )
    space = SearchSpace(spec, num_layers={"a": 4, "b": 4, "base": 4})
    assert set(space.distributions) == {
        "passthrough.slice0.source",
        "passthrough.slice0.length",
        "passthrough.slice1.start",
    }
    config = space.config(
        {
            "passthrough.slice0.source": "b",
            "passthrough.slice0.length": 3,
            "passthrough.slice1.start": 3,
        }
    )
    assert config["slices"] == [
        {"sources": [{"model": "org/b", "layer_range": [0, 3]}]},
        {"sources": [{"model": "org/base", "layer_range": [3, 4]}]},  # clamped to the depth
    ]
    merging.load_merge_config(config)


def test_baselines_are_each_source_and_the_average():
    baselines = space_of().baselines()
    assert list(baselines) == ["base", "a", "b", "average"]
    assert baselines["a"] == {
        "models": [{"model": "org/a"}],
        "merge_method": "passthrough",
        "dtype": "float32",
    }
    assert baselines["average"]["merge_method"] == "linear"
    assert [m["parameters"]["weight"] for m in baselines["average"]["models"]] == [1.0, 1.0]
    for config in baselines.values():
        merging.load_merge_config(config)


def test_fingerprint_changes_with_the_space_only():
    assert space_of().fingerprint() == space_of(budget={"trials": 99}).fingerprint()
    assert (
        space_of().fingerprint()
        != space_of(parameters={"weight": {"low": 0.2, "high": 1.0}, "density": 0.5}).fingerprint()
    )


def test_default_weights_are_equal_and_sum_to_one_within_the_range():
    """Three task vectors at mid-range weights (0.55 each) would be scaled by 1.65: the default
    point of a method that does not normalise its weights is the average of the models."""
    three = {"base": "org/base", "models": {"a": "org/a", "b": "org/b", "c": "org/c"}}
    space = space_of(
        sources=three,
        methods=["task_arithmetic", "ties", "linear"],
        parameters={"weight": {"low": 0.1, "high": 1.0}, "density": {"low": 0.1, "high": 1.0}},
    )
    for method in ("task_arithmetic", "ties", "linear"):
        point = space.default_point(method)
        assert [point[f"weight.{m}"] for m in "abc"] == [1 / 3] * 3, method
    assert space.default_point("ties")["density.a"] == 1.0  # the method's own default
    narrow = space_of(sources=three, parameters={"weight": {"low": 0.5, "high": 1.0}})
    assert narrow.default_point("ties")["weight.a"] == 0.5  # kept inside the range


def test_the_task_arithmetic_default_point_merges_to_the_plain_average(tmp_path):
    import torch

    from tests.helpers.tiny_models import load_state, make_llama_family

    base, *models = make_llama_family(tmp_path / "family", n_models=4)
    sources = {"base": str(base), "models": {m: str(p) for m, p in zip("abc", models, strict=True)}}
    space = space_of(sources=sources, methods=["task_arithmetic", "linear"])
    merged = {}
    for method in ("task_arithmetic", "linear"):
        config = space.config({**space.default_point(method), "method": method})
        out = merging.Merger().merge_to_disk(config, tmp_path / method)
        merged[method] = load_state(out)
    assert merged["task_arithmetic"].keys() == merged["linear"].keys()
    # equal up to the config's 4 significant digits of 1/3 (weights summing to 0.9999)
    for name, tensor in merged["linear"].items():
        torch.testing.assert_close(merged["task_arithmetic"][name], tensor, rtol=2e-4, atol=1e-5)
    moved = [(merged["linear"][n] - t).abs().max() for n, t in load_state(base).items()]
    assert max(moved) > 1e-3  # the average is not the base: the comparison has something to see
