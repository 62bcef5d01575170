"""A regret's standard error is paired by held-out item, and the report says which runs it
tells apart from the reference and from the worst-regret target."""

from __future__ import annotations

import math

import pytest

from bench.efficacy import paired
from bench.efficacy import report as R


def test_item_scores_round_trip_through_their_string_form():
    items = {"rev": [(2, 1.0), (0, 0.0), (1, 1.0)], "up": [(0, 1.0)]}
    encoded = paired.encode_items(items)
    assert encoded == {"rev": "011", "up": "1"}
    assert paired.decode_items(encoded) == {
        "rev": [(0, 0.0), (1, 1.0), (2, 1.0)],
        "up": [(0, 1.0)],
    }


@pytest.mark.parametrize(
    ("items", "problem"),
    [({"rev": [(0, 1.0), (2, 0.0)]}, "not 0..1"), ({"rev": [(0, 0.5)]}, "not all 0 or 1")],
)
def test_a_gap_or_a_partial_score_is_refused(items, problem):
    with pytest.raises(ValueError, match=problem):
        paired.encode_items(items)


def test_the_regret_and_its_error_come_from_per_item_differences():
    reference = {"a": [(0, 1.0), (1, 1.0), (2, 0.0), (3, 0.0)], "b": [(0, 1.0), (1, 0.0)]}
    chosen = {"a": [(0, 1.0), (1, 0.0), (2, 0.0), (3, 0.0)], "b": [(0, 1.0), (1, 0.0)]}
    got = paired.regret_with_error(reference, chosen, ["a", "b"])
    # a: differences 0 1 0 0 (mean 1/4, sample variance 1/4, over 4 items 1/16); b: none
    assert got.value == pytest.approx(0.5 * 0.25)
    assert got.stderr == pytest.approx(math.sqrt(0.25 * 1 / 16))
    same = paired.regret_with_error(reference, reference, ["a", "b"])
    assert same.value == 0 and same.stderr == 0


def test_a_run_gets_an_error_only_where_the_reference_kept_its_items():
    chosen = {"a": [(0, 1.0), (1, 0.0)]}
    assert paired.regret_stderr({"reference": 0.5}, chosen, ["a"]) is None
    assert paired.regret_stderr({"heldout_items": {}}, chosen, ["a"]) is None
    got = paired.regret_stderr({"heldout_items": {"a": "11"}}, chosen, ["a"])
    assert got == pytest.approx(0.5)  # differences 0 and 1: sample sd 0.707, over sqrt(2)
    assert paired.regret_stderr({"heldout_items": {"a": "11"}}, {}, ["a"]) is None


def _reference(score: float) -> dict:
    return {"landscape": "x", "reference": score, "family": {"weights": "w", "cpu": "cpu"}}


def _run(strategy: str, seed: int, heldout: float, stderr: float | None, name="x") -> dict:
    return {
        "landscape": name,
        "weights": "w",
        "strategy": strategy,
        "budget": 60,
        "seed": seed,
        "heldout": heldout,
        "items": 100,
        "regret_stderr": stderr,
    }


def test_the_report_counts_runs_behind_the_reference_and_over_the_target():
    references = {R.weights_key("x", "w"): _reference(0.80)}
    runs = [
        _run("auto", 0, 0.79, 0.01),  # regret 0.01: within 2 s.e.
        _run("auto", 1, 0.74, 0.02),  # 0.06: behind (>= 0.04), over 0.03 by less than 0.04
        _run("auto", 2, 0.70, 0.02),  # 0.10: behind, and over 0.03 by more than 2 s.e.
        _run("auto", 3, 0.60, None),  # no error kept: counted in the regret, not judged
    ]
    (row,) = R.regret_rows(runs, references)
    assert row["runs"] == 4 and row["judged"] == 3
    assert row["behind"] == 2 and row["over_target"] == 1
    assert row["stderr"] == pytest.approx(0.02)
    assert "2 of 3" in R.render_regret([row]) and "1 of 3" in R.render_regret([row])


def test_strategies_are_compared_with_random_seed_by_seed():
    references = {R.weights_key("x", "w"): _reference(0.80)}
    runs = [_run("random", s, 0.70, None) for s in range(3)]
    runs += [_run("auto", s, h, None) for s, h in enumerate((0.72, 0.74, 0.76))]
    runs.append(_run("auto", 7, 0.20, None))  # no random run with seed 7: not a pair
    (row,) = R.paired_differences(runs, references)
    assert (row["strategy"], row["against"], row["pairs"]) == ("auto", "random", 3)
    assert row["mean"] == pytest.approx(-0.04)  # differences -0.02, -0.04, -0.06
    assert row["stderr"] == pytest.approx(0.02 / math.sqrt(3))
    assert "-0.040 ± 0.012" in R.render_differences([row])


def test_multi_fidelity_is_compared_with_its_strategy_at_the_same_and_at_half_the_budget():
    references = {R.weights_key("x", "w"): _reference(0.80)}
    runs = [{**_run("auto", s, 0.75, None), "items": 1000} for s in range(3)]
    runs += [
        {**_run("auto+mf", s, h, None), "items": i}
        for s, h, i in ((0, 0.74, 400), (1, 0.75, 500), (2, 0.76, 450))
    ]
    runs += [{**_run("auto+mf", s, 0.78, None), "budget": 120, "items": 900} for s in range(2)]
    runs.append({**_run("random", 0, 0.10, None), "items": 1000})  # not its strategy: no pair
    runs.append({**_run("auto", 0, 0.10, None), "budget": 240, "items": 4000})  # not compared
    rows = {(r["budget"], r["against_budget"]): r for r in R.multi_fidelity_rows(runs, references)}
    assert set(rows) == {(60, 60), (120, 60)}
    same = rows[(60, 60)]
    assert (same["strategy"], same["against"], same["pairs"]) == ("auto+mf", "auto", 3)
    assert same["items_share"] == pytest.approx(0.45)  # median of 0.40, 0.50, 0.45
    assert same["mean"] == pytest.approx(0.0, abs=1e-12)  # differences +0.01, 0, -0.01
    assert same["stderr"] == pytest.approx(0.01 / math.sqrt(3))
    assert rows[(120, 60)]["pairs"] == 2 and rows[(120, 60)]["mean"] == pytest.approx(-0.03)
    assert "| 45% |" in R.render_multi_fidelity([same])


def test_a_recorded_merge_is_rebuilt_with_its_own_seed_and_scored_per_item():
    import yaml

    from bench.efficacy import landscapes as L
    from mergesearch.search.demo.table import DemoScorer, ties_config

    landscape = L.get("shipped-s0")
    config = {**ties_config(landscape.root, 0.3, 1.0), "merge_method": "dare_ties", "seed": 5}
    rescorer = paired.Rescorer(landscape)
    mean, items = rescorer.items(yaml.safe_dump(config))
    assert sorted(items) == list(landscape.targets)
    assert all(len(pairs) == 200 for pairs in items.values())
    per_task = [sum(s for _, s in pairs) / len(pairs) for pairs in items.values()]
    assert mean == pytest.approx(sum(per_task) / len(per_task))
    scorer = DemoScorer(landscape.root, split="heldout", threads=1)
    assert scorer.scores(config, seed=5)["mean"] == mean  # the config's seed, not 0
    assert scorer.scores(config, seed=0)["mean"] != mean  # DARE's draws depend on it
