"""The filtered study views samplers see: which trials they hold and how they are numbered."""

import optuna
from optuna.trial import TrialState

from mergesearch.search.optimize.views import FilteredStudy, indexes_trials_by_number


def _study_with_hidden_trials() -> optuna.Study:
    """Trials 0, 2, 4 are 'hidden' (like baselines); 1, 3 complete; 5 pruned; 6 running."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for number in range(6):
        trial = study.ask()
        trial.set_user_attr("hidden", number % 2 == 0)
        x = trial.suggest_float("x", 0, 1)
        state = TrialState.PRUNED if number == 5 else TrialState.COMPLETE
        study.tell(trial, None if state == TrialState.PRUNED else x, state=state)
    study.ask().set_user_attr("hidden", False)
    return study


def _visible(trial) -> bool:
    return not trial.user_attrs["hidden"]


def test_plain_view_keeps_real_numbers():
    view = FilteredStudy(_study_with_hidden_trials(), _visible)
    assert [t.number for t in view._get_trials()] == [1, 3, 5, 6]
    complete = view._get_trials(states=(TrialState.COMPLETE,))
    assert [t.number for t in complete] == [1, 3]


def test_renumbered_view_numbers_by_position_among_all_kept_trials():
    study = _study_with_hidden_trials()
    view = FilteredStudy(study, _visible, renumber=True)
    everything = view._get_trials(deepcopy=False, use_cache=True)
    assert [t.number for t in everything] == [0, 1, 2, 3]
    assert all(everything[t.number] is t for t in everything)  # what genetic samplers rely on
    # a states filter keeps each trial's number: it is its place among all kept trials
    assert [t.number for t in view._get_trials(states=(TrialState.PRUNED, TrialState.RUNNING))] == [
        2,
        3,
    ]
    # the study's own trials are not touched
    assert [t.number for t in study.trials] == list(range(7))


def test_only_genetic_samplers_get_renumbered_views():
    assert indexes_trials_by_number(optuna.samplers.NSGAIISampler())
    assert indexes_trials_by_number(optuna.samplers.NSGAIIISampler())
    assert not indexes_trials_by_number(optuna.samplers.TPESampler(constant_liar=True))
    assert not indexes_trials_by_number(optuna.samplers.RandomSampler())
