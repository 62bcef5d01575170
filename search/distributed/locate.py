"""From what a user types after ``status``/``dashboard``/``report``/``export`` to an open study.

``STUDY`` is a results folder (``results/<study>/`` holding ``study.db`` or
``journal.log``), a study file, or a storage URL. The study is ``--study NAME`` or else the only
study in the storage. The results folder is where reports, artifacts and exports go: the folder
given, the folder of a study file, or ``results/<study>`` for a URL (a database server has no
folder of its own).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from mergesearch.search.distributed.storage import (
    RESULTS_DIR,
    open_existing,
    pick_study_name,
    resolve_target,
)


@dataclass(frozen=True)
class StudyLocation:
    storage_url: str
    study_name: str
    results_dir: Path


def _results_dir(target: str, url: str, study_name: str) -> Path:
    path = Path(target)
    if "://" not in target and not target.startswith(("journal:", "memory")):
        return path if path.is_dir() else path.parent
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:")).parent
    return RESULTS_DIR / study_name


def _locate(target: str, study_name: str | None) -> tuple[StudyLocation, BaseStorage]:
    url = resolve_target(str(target))
    storage = open_existing(url)  # reading never creates a database or a study
    name = pick_study_name(storage, url, study_name)
    return StudyLocation(url, name, _results_dir(str(target), url, name)), storage


def locate_study(target: str, study_name: str | None = None) -> StudyLocation:
    """Resolve ``target`` and the study name; ``SpecError`` (exit 2) naming what is wrong."""
    return _locate(target, study_name)[0]


def open_study(target: str, study_name: str | None = None) -> tuple[optuna.Study, StudyLocation]:
    """The study ``target`` names, loaded, with its location."""
    location, storage = _locate(target, study_name)
    return optuna.load_study(study_name=location.study_name, storage=storage), location


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional target and ``--study`` every reading command takes."""
    parser.add_argument(
        "target",
        metavar="STUDY",
        help="the study: its results folder (holding study.db or journal.log), a study file, "
        "or a storage URL",
    )
    parser.add_argument(
        "--study",
        "--study-name",
        dest="study",
        metavar="NAME",
        help="study to read (default: the only study in the storage)",
    )
