"""A search over the newer mergekit methods next to TIES runs on the demo family.

The demo spec (``mergesearch demo``) with its methods swapped for ``[ties, sce, multislerp]``,
their parameters as ranges, on a shrunken demo family, scored by the demo's own lm-eval tasks
on a few items: a handful of trials, every one merged and evaluated.
"""

from __future__ import annotations

import pytest
import yaml
from optuna.trial import TrialState

from mergesearch.search.cli.demo import demo_spec
from mergesearch.search.demo.family import build_demo_family
from mergesearch.search.optimize.study import run_search
from tests.search.demo.test_demo_models import TINY

METHODS = ["ties", "sce", "multislerp"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_demo_family(tmp_path_factory.mktemp("demo"), seed=3, recipe=TINY, evaluate=False)


def test_search_over_ties_sce_and_multislerp_runs_on_the_demo_family(family, tmp_path):
    spec = demo_spec(family, seed=3)
    spec["storage"] = f"sqlite:///{tmp_path / 'study.db'}"
    spec["methods"] = METHODS
    spec["parameters"] = {
        "weight": {"low": 0.1, "high": 1.0},  # ties and multislerp, per model
        "density": {"low": 0.2, "high": 1.0},  # ties
        "select_topk": {"low": 0.1, "high": 1.0},  # sce
    }
    for objective in spec["objectives"]:
        objective["splits"] = {"search": {"task": objective["splits"]["search"], "limit": 4}}
    spec["baselines"] = False
    spec["sampler"] = {"name": "random", "seed": 0}
    spec["budget"] = {"trials": 6}

    result = run_search(spec, progress=False, heldout=False)

    trials = result.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    configs = {t.user_attrs["method"]: yaml.safe_load(t.user_attrs["merge_config"]) for t in trials}
    assert set(configs) == set(METHODS)
    assert 0.1 <= configs["sce"]["parameters"]["select_topk"] <= 1.0
    assert configs["multislerp"]["base_model"] == str(family.base)
    assert all("weight" in m["parameters"] for m in configs["multislerp"]["models"])
    assert all(0.0 <= t.value <= 1.0 for t in trials)
