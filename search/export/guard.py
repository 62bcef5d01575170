"""What ``export --out X`` may replace: never a source, the study or the folder that holds them.

``merging.outputs.check_output`` is the rule; this module lists what a study protects: every
source model (from the trial's merge config and the study's ``sources``), the study's database
or journal file, and its results folder (the export goes *inside* it by default, never over
it).
"""

from __future__ import annotations

from pathlib import Path

import optuna

from mergesearch.merging.config import MergeConfig
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.outputs import Protected, check_output, source_models
from mergesearch.search import attrs as A
from mergesearch.search.distributed.locate import StudyLocation
from mergesearch.search.distributed.locks import file_of


def protected_by_study(
    study: optuna.Study, location: StudyLocation, config: MergeConfig
) -> list[Protected]:
    refs = dict.fromkeys(config.model_refs)
    refs.update(dict.fromkeys(str(p) for p in (study.user_attrs.get(A.SOURCES) or {}).values()))
    folders = [(ref, Path(ref)) for ref in refs if Path(ref).expanduser().exists()]
    found = [*source_models(folders), Protected("the study's results folder", location.results_dir)]
    storage = file_of(location.storage_url)
    if storage is not None:
        found.append(Protected("the study's storage", storage))
    return found


def check_export_output(
    out: Path,
    study: optuna.Study,
    location: StudyLocation,
    config: MergeConfig,
    *,
    overwrite: bool,
) -> None:
    """``ConfigError`` (exit 2) unless ``out`` may be (re)placed."""
    check_output(out, protected_by_study(study, location, config), flag="--out")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: output folder exists; pass --overwrite to replace it")
