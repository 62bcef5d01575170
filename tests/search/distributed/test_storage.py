"""Storage URLs: every backend through one open_storage(url)."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import InMemoryStorage, JournalStorage, RDBStorage

from mergesearch.search.distributed.storage import (
    default_storage_url,
    open_storage,
    pick_study_name,
    resolve_target,
)
from mergesearch.search.errors import SpecError


def test_default_url_is_results_study_db():
    assert default_storage_url("demo") == "sqlite:///results/demo/study.db"


def test_backends(tmp_path):
    assert isinstance(open_storage(f"sqlite:///{tmp_path}/x/study.db"), RDBStorage)
    assert (tmp_path / "x" / "study.db").exists()
    assert isinstance(open_storage(f"journal:{tmp_path}/j/journal.log"), JournalStorage)
    assert isinstance(open_storage("memory:"), InMemoryStorage)


def test_bad_urls_are_one_line_errors(tmp_path):
    with pytest.raises(SpecError, match="unknown kind 'redis'"):
        open_storage("redis://localhost")
    with pytest.raises(SpecError, match="cannot open"):
        open_storage("postgresql+psycopg2://u:p@127.0.0.1:1/none")


def test_resolve_target_and_study_pick(tmp_path):
    url = f"sqlite:///{tmp_path}/r/study.db"
    storage = open_storage(url)
    assert resolve_target(str(tmp_path / "r")) == url
    assert resolve_target(str(tmp_path / "r" / "study.db")) == url
    with pytest.raises(SpecError, match="holds no study"):
        pick_study_name(storage, url, None)
    optuna.create_study(study_name="one", storage=storage)
    assert pick_study_name(storage, url, None) == "one"
    optuna.create_study(study_name="two", storage=storage)
    with pytest.raises(SpecError, match="several studies"):
        pick_study_name(storage, url, None)
    with pytest.raises(SpecError, match="no such results folder"):
        resolve_target(str(tmp_path / "missing"))
