"""A storage a viewer cannot write to: what the dashboard serves a study from.

optuna-dashboard offers writing actions (notes, artifacts, telling a running trial, deleting a
study), and a viewer of a study shared by a whole team must not change it. ``ReadOnlyStorage``
passes every read to the real storage and refuses every write with one line; an SQLite file is
also opened by SQLite itself in read-only mode, so that not even a connection's housekeeping
touches the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Container
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from mergesearch.search.distributed.locks import file_of, scheme
from mergesearch.search.distributed.storage import open_existing
from mergesearch.search.errors import SearchRuntimeError


class ReadOnlyError(SearchRuntimeError):
    """A write reached a storage opened for reading only."""


def open_read_only(url: str) -> ReadOnlyStorage:
    """The existing storage ``url`` names (see ``open_existing``), for reading only."""
    checked = open_existing(url)  # the one-line errors of a missing, empty or foreign store
    path = file_of(url)
    if scheme(url) != "sqlite" or path is None:
        return ReadOnlyStorage(checked)
    if isinstance(checked, RDBStorage):
        checked.engine.dispose()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        inner = RDBStorage(
            f"sqlite:///file:{path.absolute()}?mode=ro&uri=true",
            engine_kwargs={"connect_args": {"timeout": 60}},
            skip_table_creation=True,
        )
    return ReadOnlyStorage(inner)


class ReadOnlyStorage(BaseStorage):
    """Every read of ``inner``; every write refused."""

    def __init__(self, inner: BaseStorage):
        self.inner = inner

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise ReadOnlyError(
            "this study is open read-only (mergesearch dashboard): nothing is saved"
        )

    create_new_study = _refuse
    delete_study = _refuse
    set_study_user_attr = _refuse
    set_study_system_attr = _refuse
    create_new_trial = _refuse
    set_trial_param = _refuse
    set_trial_state_values = _refuse
    set_trial_intermediate_value = _refuse
    set_trial_user_attr = _refuse
    set_trial_system_attr = _refuse

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        # sorted as optuna-dashboard sorts them for an RDB storage (it checks the type)
        return sorted(self.inner.get_all_studies(), key=lambda s: s._study_id)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self.inner.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self.inner.get_trial_param(trial_id, param_name)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.inner.get_trial(trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self.inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        return self.inner.get_n_trials(study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.inner.get_best_trial(study_id)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self.inner.get_trial_params(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.inner.get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.inner.get_trial_system_attrs(trial_id)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._refuse()

    def remove_session(self) -> None:
        self.inner.remove_session()
