"""The efficacy report judges each run against the reference of the weights it searched.

Another CPU trains other weights from the same recipe and seed: its references and runs are kept
beside this machine's under their own weights key, and a run must never be scored against the
reference of another family that happens to share its landscape name.
"""

from __future__ import annotations

import pytest

from bench.efficacy import report as R


def _reference(name: str, weights: str, cpu: str, score: float) -> dict:
    return {
        "landscape": name,
        "reference": score,
        "method": "ties",
        "search": score,
        "best_specialist": {"name": "up", "heldout": 0.5},
        "average_heldout": 0.6,
        "trials": 504,
        "seconds": 1.0,
        "family": {"weights": weights, "cpu": cpu},
    }


def _run(name: str, weights: str, heldout: float | None, strategy: str = "auto") -> dict:
    return {
        "landscape": name,
        "weights": weights,
        "strategy": strategy,
        "budget": 60,
        "seed": 0,
        "heldout": heldout,
        "items": 24000,
    }


REFERENCES = {
    R.weights_key("demo-s0", "aaaa"): _reference("demo-s0", "aaaa", "CPU one", 0.80),
    R.weights_key("demo-s0", "bbbb"): _reference("demo-s0", "bbbb", "CPU two", 0.70),
}


def test_a_run_is_judged_against_the_reference_of_its_own_weights():
    runs = [_run("demo-s0", "aaaa", 0.75), _run("demo-s0", "bbbb", 0.75)]
    assert [R.regret(run, REFERENCES) for run in runs] == pytest.approx([0.05, -0.05])


def test_each_cpu_reports_only_its_runs():
    by_cpu = R._by_cpu(REFERENCES)
    assert list(by_cpu) == ["CPU one", "CPU two"]
    runs = [
        _run("demo-s0", "aaaa", 0.75),
        _run("demo-s0", "bbbb", 0.60),
        _run("demo-s0", "cccc", 0),
    ]
    one = R.runs_with_reference(runs, by_cpu["CPU one"])
    assert [run["weights"] for run in one] == ["aaaa"]
    (row,) = R.regret_rows(R.runs_with_reference(runs, by_cpu["CPU two"]), by_cpu["CPU two"])
    assert row["runs"] == 1 and row["median"] == pytest.approx(0.10)


def test_a_run_that_chose_nothing_regrets_the_whole_reference():
    rows = R.regret_rows([_run("demo-s0", "aaaa", None), _run("demo-s0", "aaaa", 0.80)], REFERENCES)
    assert rows[0]["worst"] == pytest.approx(0.80) and rows[0]["median"] == pytest.approx(0.40)


def test_markdown_table_has_one_separator_cell_per_column():
    text = R.markdown_table(["a", "b"], [["1", "2"], ["3", "4"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]
    assert R.markdown_table(["a"], [["1"]], with_header=False) == "| 1 |"


def test_the_shipped_landscape_is_loaded_in_place_and_never_trained(monkeypatch):
    """The shipped family holds the same weights on every machine, so its reference carries
    over between CPUs; building it would train other weights, so ``build`` only loads it."""
    from bench.efficacy import landscapes as L
    from mergesearch.configs import DEMO_FAMILY_DIR

    def no_training(*args, **kwargs):
        raise AssertionError("the shipped family must not be trained")

    monkeypatch.setattr(L, "build_demo_family", no_training)
    shipped = L.get("shipped-s0")
    assert shipped in L.LANDSCAPES and L.is_built(shipped)
    family = L.build(shipped)
    assert family.root == DEMO_FAMILY_DIR / "seed0" == shipped.root
    assert set(family.specialists) == {"rev", "up"} and family.base.is_dir()
    spec = L.spec_for(shipped, methods=shipped.methods, sampler="auto", budget=5, seed=0,
                      storage="sqlite:///unused.db")  # fmt: skip
    assert spec["sources"]["base"] == str(DEMO_FAMILY_DIR / "seed0" / "base")


@pytest.mark.parametrize("strategy", ["auto", "auto+mf", "tpe+mf", "auto+mf+cap", "demo"])
def test_every_strategy_names_a_valid_study(strategy):
    """A multi-fidelity strategy's ``+`` is not allowed in a study name (a run of ``auto+mf``
    once stopped the whole suite there)."""
    from bench.search_efficacy import study_name
    from mergesearch.search.spec.schema import STUDY_RE

    name = study_name(strategy, 60, 1, "r7" if strategy == "demo" else None)
    assert STUDY_RE.match(name) and name.endswith("-b60-s1" + ("-r7" if strategy == "demo" else ""))


def test_the_file_reports_every_cpu_with_a_plot_of_its_own_and_keeps_the_notes(
    tmp_path, monkeypatch
):
    import json

    monkeypatch.setattr(R, "RESULTS", tmp_path / "RESULTS_efficacy.md")
    monkeypatch.setattr(R, "PLOTS", tmp_path)
    monkeypatch.setattr(R, "landscape_rows", lambda landscapes: [])  # nothing built here
    R.RESULTS.write_text(f"old\n{R.NOTES_MARK}\nmy notes\n")
    refs, runs = tmp_path / "reference.json", tmp_path / "runs.json"
    refs.write_text(json.dumps(REFERENCES))
    runs.write_text(
        json.dumps({"1": _run("demo-s0", "aaaa", 0.75), "2": _run("demo-s0", "bbbb", 0.6)})
    )
    R.write_results(refs, runs)
    text = R.RESULTS.read_text()
    assert text.count("### Regret") == 2 and text.endswith(f"{R.NOTES_MARK}\nmy notes\n")
    plots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert plots == ["search_efficacy-cpu-one.png", "search_efficacy-cpu-two.png"]
    assert all(f"]({name})" in text for name in plots)


def test_a_run_under_another_recipe_of_its_strategy_is_not_taken_as_recorded(monkeypatch):
    """``auto`` changes with the portfolio's default inner sampler and ``demo`` with it too: a
    record made before such a change is run again, not reported as the current strategy's."""
    from bench import search_efficacy as E
    from mergesearch.search.optimize import portfolio

    strategies = ("auto", "auto+mf", "demo", "random", "auto-tpe", "auto-cmaes")
    now = {s: E.strategy_recipe(s) for s in strategies}
    assert now["random"] is None  # nothing beyond the name
    runs = {"k": {"recipe": now["auto"]}, "old": {}}
    assert E._recorded(runs, "k", "auto") and not E._recorded(runs, "old", "auto")
    assert E._recorded(runs, "old", "random") and not E._recorded(runs, "missing", "random")
    other = next(k for k in portfolio.INNER_SAMPLERS if k != portfolio.DEFAULT_INNER)
    monkeypatch.setattr(portfolio, "DEFAULT_INNER", other)
    for strategy in ("auto", "auto+mf", "demo"):
        assert E.strategy_recipe(strategy) != now[strategy]
    assert E.strategy_recipe("auto-tpe") == now["auto-tpe"]  # its inner sampler is its name
    assert not E._recorded(runs, "k", "auto")
    # a change of the portfolio itself (allocation, starting points) reruns every portfolio run
    monkeypatch.setattr(E, "PORTFOLIO_REVISION", E.PORTFOLIO_REVISION + 1)
    for strategy in ("auto", "auto+mf", "demo", "auto-tpe", "auto-cmaes"):
        assert E.strategy_recipe(strategy) != now[strategy]
    assert E.strategy_recipe("random") is None
    # other pruner settings rerun the multi-fidelity runs, and only those
    before = {s: E.strategy_recipe(s) for s in strategies}
    monkeypatch.setattr(E, "MF_PRUNER", {**E.MF_PRUNER, "stages": [10, None]})
    assert E.strategy_recipe("auto+mf") != before["auto+mf"]
    assert all(E.strategy_recipe(s) == before[s] for s in strategies if s != "auto+mf")


def test_a_capped_strategy_is_paired_with_its_unpruned_self_at_half_its_budget():
    """``auto+mf+cap`` at 120 trials is judged against ``auto`` at 60 (the items it may spend)
    and at 120; never against another strategy, and ``auto+cap`` names no strategy."""
    from bench import search_efficacy as E

    def run(strategy: str, budget: int, heldout: float, items: int) -> dict:
        return {**_run("demo-s0", "aaaa", heldout, strategy), "budget": budget, "items": items}

    runs = [
        run("auto", 60, 0.76, 24000),
        run("auto", 120, 0.79, 48000),
        run("auto+mf+cap", 120, 0.78, 23600),
        run("tpe", 60, 0.70, 24000),
    ]
    rows = {(r["against"], r["against_budget"]): r for r in R.multi_fidelity_rows(runs, REFERENCES)}
    assert set(rows) == {("auto", 60), ("auto", 120)}
    assert rows[("auto", 60)]["items_share"] == pytest.approx(23600 / 24000)
    assert rows[("auto", 60)]["mean"] == pytest.approx(-0.02)  # 0.78 against 0.76
    assert R.unpruned("auto+mf+cap") == R.unpruned("auto+mf") == "auto"
    assert E.strategy_recipe("auto+mf+cap") != E.strategy_recipe("auto+mf")
    with pytest.raises(ValueError, match="auto\\+cap"):
        E.run_command([], ["auto+cap"], [60], [0])


def test_a_capped_run_searches_with_the_pruner_and_an_item_budget():
    from bench import search_efficacy as E
    from bench.efficacy import landscapes as L
    from mergesearch.search.spec.schema import SearchSpec

    shipped = L.get("shipped-s0")
    specs = {
        s: E.run_spec(shipped, s, 120, 1, storage="sqlite:///unused.db", name="x")
        for s in ("auto", "auto+mf", "auto+mf+cap")
    }
    assert specs["auto+mf+cap"]["budget"] == {"trials": 120, "items": 60 * 2 * 200}
    assert specs["auto+mf+cap"]["pruner"] == specs["auto+mf"]["pruner"] == E.MF_PRUNER
    assert "pruner" not in specs["auto"] and specs["auto+mf"]["budget"] == {"trials": 120}
    assert SearchSpec.model_validate(specs["auto+mf+cap"]).budget.items == 24000
