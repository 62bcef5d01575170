"""Multi-fidelity and the item budget: a study counts what its evaluators were asked."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from mergesearch.search import attrs as A
from mergesearch.search import run_search
from mergesearch.search.distributed.budget import items_spent
from tests.helpers.specs import make_spec

LIMIT, FIRST = 40, 10  # items per task: the whole search split, the first look


def lm_eval_spec(family, tmp_path, **changes):
    """Exact match on a demo task (lm-eval: counted requests) plus the probe, whose score
    tells merges apart (random tiny models answer no demo item right)."""
    objective = {
        "name": "rev",
        "evaluator": "lm_eval",
        "metric": "exact_match,strip",
        "splits": {"search": {"task": "demo_rev_search", "limit": LIMIT}},
    }
    probe = make_spec(family, tmp_path)["objectives"][0]
    return make_spec(
        family,
        tmp_path,
        objectives=[objective, probe],
        evaluators={"lm_eval": {"batch_size": 8}},
        sampler={"name": "auto", "seed": 0},
        budget={"trials": 14},
        **changes,
    )


def test_staged_trials_count_each_item_once(family, tmp_path):
    spec = lm_eval_spec(
        family,
        tmp_path,
        pruner={"name": "halving", "stages": [FIRST, None], "options": {"min_trials": 2}},
    )
    study = run_search(spec, progress=False, heldout=False).study
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    scored = [
        t for t in trials if t.state == TrialState.COMPLETE and A.DUPLICATE_OF not in t.user_attrs
    ]
    duplicates = [t for t in trials if A.DUPLICATE_OF in t.user_attrs]
    assert pruned and scored  # both kinds happened
    # one generation request per document; a finished trial adds the rest, never redoes the first
    assert {t.user_attrs[A.ITEMS] for t in pruned} == {FIRST}
    assert {t.user_attrs[A.ITEMS] for t in scored} == {LIMIT}
    assert {t.user_attrs[A.ITEMS] for t in duplicates} <= {0}
    assert items_spent(trials) == FIRST * len(pruned) + LIMIT * len(scored)


def test_unstaged_trials_count_the_whole_split(family, tmp_path):
    study = run_search(lm_eval_spec(family, tmp_path), progress=False, heldout=False).study
    done = [t for t in study.trials if A.DUPLICATE_OF not in t.user_attrs]
    assert all(t.user_attrs[A.ITEMS] == LIMIT for t in done)
    assert isinstance(study, optuna.Study)


def test_an_item_budget_stops_the_search_and_its_resume(family, tmp_path, capsys):
    """``budget.items``: no trial starts once the study's items reach it, so the last trial is
    the one that crossed it; the progress bar shows the items against it; the same command
    again starts nothing, a bigger budget goes on."""
    budget = 150
    spec = lm_eval_spec(
        family,
        tmp_path,
        pruner={"name": "halving", "stages": [FIRST, None], "options": {"min_trials": 2}},
    )
    spec["budget"] = {"trials": 100, "items": budget}
    study = run_search(spec, progress=True, heldout=False).study
    assert f"/ {budget} items" in capsys.readouterr().err
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert items_spent(trials) >= budget > items_spent(trials[:-1])
    assert len(trials) < 100

    again = run_search(spec, progress=False, heldout=False)
    assert again.ran == 0 and len(again.study.trials) == len(trials)

    bigger = run_search(spec, progress=False, heldout=False, n_items=budget + 2 * LIMIT)
    grown = sorted(bigger.study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert len(grown) > len(trials)
    assert items_spent(grown) >= budget + 2 * LIMIT > items_spent(grown[:-1])
