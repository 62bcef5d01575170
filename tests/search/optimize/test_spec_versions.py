"""Resuming a study under a changed objective or changed sources: refused, one line naming the
change, unless ``--allow-spec-change``; then a new spec version, and trials of one version never
answer for another."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from mergesearch.search import attrs as A
from mergesearch.search import run_search
from mergesearch.search.cli import main
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize import samplers, versions
from mergesearch.search.optimize.summary import best_trials
from tests.helpers import probe
from tests.helpers.specs import make_spec


def _spec(family, tmp_path, **changes: Any) -> dict[str, Any]:
    settings = {
        "methods": ["linear"],
        "parameters": {"weight": {"choices": [0.5, 1.0]}},
        "baselines": False,
        "budget": {"trials": 2},
    }
    return make_spec(family, tmp_path, **{**settings, **changes})


def _objective(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["objectives"][0]


def _task(spec):
    _objective(spec)["splits"]["search"] = {"task": "other"}


def _metric(spec):
    _objective(spec)["metric"] = "probe/other"


def _limit(spec):
    _objective(spec)["splits"]["search"] = {"limit": 3}


def _items(spec):
    _objective(spec)["splits"]["search"] = {"items": [0, 4]}


def _weight(spec):
    _objective(spec)["weight"] = 2.0


def _split(spec):
    _objective(spec)["splits"]["heldout"] = {"limit": 5}


def _evaluator_options(spec):
    _objective(spec)["options"]["options"] = {"task": "renamed"}


def _direction(spec):
    _objective(spec)["direction"] = "minimize"


def _sources(spec):
    models = spec["sources"]["models"]
    models["a"], models["b"] = models["b"], models["a"]


def _added_objective(spec):
    second = copy.deepcopy(_objective(spec))
    second["name"] = "second"
    spec["objectives"].append(second)


CHANGES = {
    "task": (_task, "objectives.probe.splits.search.task was 'None', now 'other'"),
    "metric": (_metric, "objectives.probe.metric was 'probe/score', now 'probe/other'"),
    "limit": (_limit, "objectives.probe.splits.search.limit was 'None', now '3'"),
    "items": (_items, "objectives.probe.splits.search.items was 'None', now '[0, 4]'"),
    "weight": (_weight, "objectives.probe.weight was '1', now '2'"),
    "split": (_split, "objectives.probe.splits was 'search', now 'heldout, search'"),
    "options": (_evaluator_options, "objectives.probe.options was"),
    "direction": (_direction, None),
    "sources": (_sources, "sources.a was"),
    "objectives": (_added_objective, "objectives was 'probe', now 'probe, second'"),
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_a_changed_objective_or_source_is_refused_naming_it(family, tmp_path, capsys, field):
    spec = _spec(family, tmp_path)
    run_search(spec, progress=False, heldout=False)
    change, expected = CHANGES[field]
    changed = copy.deepcopy(spec)
    change(changed)
    changed["budget"] = {"trials": 3}
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    probe.reset()
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    if field == "direction":  # the study value's own direction changes: refused outright
        assert "optimises ['maximize'], this spec ['minimize']" in err
    else:
        assert "was scored under another spec" in err and "--allow-spec-change" in err
        assert expected in err, err
    assert not probe.CALLS  # nothing was scored under the refused spec


def test_speed_settings_and_the_budget_resume_as_before(family, tmp_path):
    spec = _spec(family, tmp_path)
    run_search(spec, progress=False, heldout=False)
    faster = copy.deepcopy(spec)
    faster["budget"] = {"trials": 3}
    faster["threads"] = 2
    faster["evaluators"] = {"python": {"threads": 1}}
    result = run_search(faster, progress=False, heldout=False)
    assert len(result.study.trials) == 3
    assert versions.current(result.study) == 1


def test_allowed_change_records_a_version_and_never_answers_across_it(family, tmp_path):
    spec = _spec(family, tmp_path, budget={"trials": 6})
    first = run_search(spec, progress=False, heldout=False)
    old = {t.user_attrs[A.CONFIG_HASH]: t.values[0] for t in first.study.trials}

    changed = copy.deepcopy(spec)
    _weight(changed)
    changed["budget"] = {"trials": 14}
    probe.reset()
    with pytest.raises(SpecError, match=r"objectives\.probe\.weight"):
        run_search(changed, progress=False, heldout=False)
    result = run_search(changed, progress=False, heldout=False, allow_spec_change=True)
    study = result.study
    trials = study.trials
    history = versions.versions(study)
    assert [v.number for v in history] == [1, 2]
    assert history[1].first_trial == 6
    assert "weight: 2.0" in history[1].spec and "weight: 2.0" not in history[0].spec
    assert {versions.version_of(t) for t in trials[:6]} == {1}
    assert {versions.version_of(t) for t in trials[6:]} == {2}
    # every config of version 2 was scored once under it, whether or not version 1 had it
    new = {t.user_attrs[A.CONFIG_HASH]: t.values[0] for t in trials[6:]}
    assert len(probe.CALLS) == len(new)
    assert set(new) & set(old), "no config repeated across versions: the test proves nothing"
    for t in trials:
        if A.DUPLICATE_OF in t.user_attrs:
            original = trials[t.user_attrs[A.DUPLICATE_OF]]
            assert versions.version_of(original) == versions.version_of(t)
    for key in set(new) & set(old):
        assert new[key] == pytest.approx(2 * old[key])  # the weight doubled: scored anew
    # the best trial is one of the new version; the study describes the new objective
    assert all(versions.version_of(t) == 2 for t in best_trials(study))
    assert study.user_attrs[A.OBJECTIVES][0]["weight"] == 2.0
    # the sampler learns only from scores measured under the current version
    seen = samplers._without_baselines(study, study.sampler.inner)._get_trials(deepcopy=False)
    assert seen and {versions.version_of(t) for t in seen} == {2}

    # the same spec again: version 2 goes on, nothing new is recorded
    changed["budget"] = {"trials": 15}
    again = run_search(changed, progress=False, heldout=False)
    assert versions.current(again.study) == 2 and len(again.study.trials) == 15


def test_baselines_run_again_under_a_new_version(family, tmp_path):
    spec = _spec(family, tmp_path, baselines=True, budget={"trials": 5})
    run_search(spec, progress=False, heldout=False)
    changed = copy.deepcopy(spec)
    _weight(changed)
    changed["budget"] = {"trials": 10}
    result = run_search(changed, progress=False, heldout=False, allow_spec_change=True)
    baselines = [t for t in result.study.trials if A.BASELINE in t.user_attrs]
    by_version = {
        v: sorted(t.user_attrs[A.BASELINE] for t in baselines if versions.version_of(t) == v)
        for v in (1, 2)
    }
    assert by_version[1] == by_version[2] == ["a", "average", "b", "base"]
