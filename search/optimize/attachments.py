"""What the search leaves in the study for optuna-dashboard: written by the search, never by a
viewer (a dashboard on a shared study must not write to it).

- Each trial's merge config is attached to the trial as an artifact while the trial runs:
  the metadata goes where Optuna's ``upload_artifact`` puts it (a trial system attribute
  ``artifacts:<id>``), the bytes stay in the trial's ``merge_config`` user attribute. The
  artifact id is derived from (study, trial, config), so the dashboard's artifact store finds the
  text again from the id alone (``report.dashboard``) and no file is written anywhere.
- The objectives name the study's values (``set_metric_names``), once, when the study is made.
- The study note shows the spec (when optuna-dashboard is installed; it is an optional extra).
"""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from collections.abc import Sequence

import optuna

from mergesearch.search import attrs as A

ARTIFACT_PREFIX = "artifacts:"  # Optuna's key prefix for the artifacts of a trial
NOTE_HEAD = "## mergesearch study"
NAMESPACE = uuid.UUID("6f1c2f4e-0c1e-4a53-9d0e-6d6572676573")


def artifact_name(number: int) -> str:
    return f"merge_config_trial_{number}.yaml"


def artifact_id(study_name: str, number: int, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return str(uuid.uuid5(NAMESPACE, f"{study_name}/{number}/{digest}"))


def artifact_meta(study_name: str, number: int, text: str) -> tuple[str, str]:
    """(system attribute key, JSON value) of a trial's merge-config artifact."""
    aid = artifact_id(study_name, number, text)
    meta = {
        "artifact_id": aid,
        "filename": artifact_name(number),
        "mimetype": "text/plain",  # shown in the browser, not downloaded as a blob
        "encoding": None,
    }
    return f"{ARTIFACT_PREFIX}{aid}", json.dumps(meta)


def attach_config(trial: optuna.Trial, text: str) -> None:
    """Attach ``text`` (the trial's merge config) to the running trial as an artifact."""
    key, value = artifact_meta(trial.study.study_name, trial.number, text)
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)


def name_metrics(study: optuna.Study, names: Sequence[str]) -> None:
    """Label the study's values (one name per direction) for dashboards and plots."""
    if len(names) != len(study.directions) or study.metric_names == list(names):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))


def spec_note(study_name: str, spec: str, objectives: Sequence[dict]) -> str:
    lines = [f"{NOTE_HEAD} `{study_name}`", ""]
    if objectives:
        listed = ", ".join(
            f"{o['name']} ({o.get('direction', '?')}, weight {o.get('weight', 1)})"
            for o in objectives
        )
        lines += [f"Objectives: {listed}.", ""]
    lines += [
        "Each trial's merge config is attached to it as an artifact "
        "(`merge_config_trial_<n>.yaml`); `mergesearch export --trial N` rebuilds the model.",
        "",
        "### Search spec",
        "",
        "```yaml",
        spec.rstrip("\n"),
        "```",
    ]
    return "\n".join(lines) + "\n"


def save_spec_note(study: optuna.Study) -> bool:
    """Make the study note the (latest) spec, unless a user wrote another; True when written.
    Without optuna-dashboard installed there is nobody to read a note: nothing is written."""
    try:
        from optuna_dashboard import get_note, save_note
    except ImportError:
        return False
    stored = study.user_attrs.get(A.SPEC_VERSIONS) or []
    spec = stored[-1]["spec"] if stored else study.user_attrs.get(A.SPEC, "")
    note = spec_note(study.study_name, spec, study.user_attrs.get(A.OBJECTIVES) or [])
    current = get_note(study)
    if current == note or (current and not current.startswith(NOTE_HEAD)):
        return False
    save_note(study, note)
    return True
