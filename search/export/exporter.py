"""Export a trial: its merge config alone rebuilds the model, tensor for tensor.

The folder holds the merged model (safetensors, config, tokenizer), ``mergekit_config.yml`` (the
trial's ``merge_config``, seed included: the one copy of the config) and the model card
``README.md``. Everything is built inside a hidden
staging folder (``.<out>.mergesearch-partial-<pid>``) and renamed into place when complete: a
killed export leaves only that hidden folder, which the next export removes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from mergesearch import merging
from mergesearch.merging.atomic import (
    cleanup_stale_temps,
    fsync_files,
    replace_dir,
    temp_sibling,
)
from mergesearch.merging.engine import CARD, MERGEKIT_YAML
from mergesearch.merging.errors import ConfigError
from mergesearch.search import attrs as A
from mergesearch.search.distributed.locate import StudyLocation
from mergesearch.search.export import model_card
from mergesearch.search.export.guard import check_export_output
from mergesearch.search.optimize import trials as T

DEFAULT_DIR = "best"


@dataclass
class ExportResult:
    model_dir: Path
    trial: FrozenTrial
    why: str
    seconds: float

    @property
    def yaml_path(self) -> Path:
        """The trial's mergekit config, inside the model folder."""
        return self.model_dir / MERGEKIT_YAML


def export_trial(
    study: optuna.Study,
    location: StudyLocation,
    *,
    number: int | None = None,
    pick: str = "weighted",
    out_dir: Path | str | None = None,
    overwrite: bool = False,
    shard_size: str | int = "5G",
    threads: int | None = None,
    progress: bool = True,
) -> ExportResult:
    """Rebuild trial ``number`` (default: the best, or ``pick`` of a Pareto front) on disk."""
    started = time.perf_counter()
    trial, why = T.pick_trial(study, number, pick)
    config = T.merge_config(trial)
    config_text = trial.user_attrs[A.MERGE_CONFIG]
    out = Path(out_dir if out_dir is not None else location.results_dir / DEFAULT_DIR).absolute()
    check_export_output(out, study, location, config, overwrite=overwrite)
    staging = temp_sibling(out)
    try:
        cleanup_stale_temps(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as err:
        raise ConfigError(
            f"{out.parent}: cannot create the output ({err.strerror or err}); pass --out to a "
            "writable folder"
        ) from None
    try:
        # The search merged with merge_into(config) and the config's seed: the same plan and
        # the same per-tensor seeds here give the same tensors.
        model = merging.Merger(cache_bytes=0, threads=threads).merge_to_disk(
            config, staging / "model", shard_size=shard_size, progress=progress
        )
        (model / MERGEKIT_YAML).write_text(config_text)
        title = f"{study.study_name}: trial {trial.number} ({config.merge_method})"
        (model / CARD).write_text(
            model_card.render(study, trial, why, config, config_text, title), encoding="utf-8"
        )
        fsync_files(model, [MERGEKIT_YAML, CARD])
        replace_dir(model, out)
    except merging.MergeRuntimeError as err:  # name the folder the user asked for
        raise type(err)(str(err).replace(str(staging / "model"), str(out))) from None
    except OSError as err:
        raise merging.MergeRuntimeError(
            f"{out}: export failed ({err.strerror or err}); nothing was left behind"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, trial, why, time.perf_counter() - started)


def baseline_beating(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """A baseline that scores better than ``trial`` on a single-objective study, if any."""
    if T.is_multi_objective(study) or not trial.values:
        return None
    key = T.rank_key(study)
    better = [b for b in T.baselines(study) if key(b)[0] < key(trial)[0]]
    return min(better, key=key) if better else None
