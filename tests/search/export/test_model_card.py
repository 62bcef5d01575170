"""The exported model card: Hub metadata the Hub parses (``model-index``, ``mergekit`` tag),
the method's paper, the sampler that ran, each source's real role, the baselines that ran, and
the held-out gain with its standard error."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import metadata_load

from mergesearch.search import run_search
from mergesearch.search.cli import main
from tests.helpers.specs import make_spec


def _export(tmp_path, capsys) -> str:
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return str(out / "README.md")


@pytest.fixture
def ties_card(family, tmp_path, capsys):
    spec = make_spec(family, tmp_path, methods=["ties"], budget={"trials": 7})
    spec["sampler"] = {"name": "tpe", "seed": 0}
    spec["objectives"][0]["splits"] = {"search": {"limit": 8}, "heldout": {}}
    run_search(spec, progress=False)
    return _export(tmp_path, capsys)


def test_model_index_parses_and_names_the_scores(ties_card):
    meta = metadata_load(ties_card)
    assert meta["tags"] == ["merge", "mergekit", "mergesearch"]
    assert meta["library_name"] == "transformers"
    (entry,) = meta["model-index"]
    splits = {r["dataset"]["split"]: r for r in entry["results"]}
    assert set(splits) == {"search", "heldout"}
    for result in splits.values():
        assert result["task"]["type"] == "text-generation"
        (metric,) = result["metrics"]
        assert metric["type"] == "probe/score" and 0 < abs(metric["value"]) <= 1


def test_card_names_the_sampler_the_paper_and_the_gain_with_its_error(ties_card):
    text = Path(ties_card).read_text(encoding="utf-8")
    assert "evolutionary" not in text.lower()
    assert "Optuna with TPE (tree-structured Parzen estimator" in text
    assert "Paper: <https://arxiv.org/abs/2306.01708>" in text  # TIES
    assert "- `" in text and "(base) — source `base`" in text
    assert "Held-out gain over the best source" in text and " ± " in text and "1 s.e." in text
    assert "4 baselines (`base`, `a`, `b` alone; their uniform average)" in text


def test_slerp_card_names_the_t0_end_and_no_average(family, tmp_path, capsys):
    spec = make_spec(
        family,
        tmp_path,
        sources={"base": {"start": family["a"]}, "models": {"end": family["b"]}},
        methods=["slerp"],
        parameters={"t": {"low": 0.2, "high": 0.8}},
        budget={"trials": 4},
    )
    run_search(spec, progress=False)
    text = Path(_export(tmp_path, capsys)).read_text(encoding="utf-8")
    assert f"- `{family['a']}` (t=0 end) — source `start`" in text
    assert "(base)" not in text
    assert "2 baselines (`start`, `end` alone)" in text and "average" not in text.split("##")[-1]
    assert "| source: start |" in text
    assert "evolutionary" not in text.lower()
    assert "portfolio" not in text  # one method: auto is TPE (or CMA-ES), named as such
