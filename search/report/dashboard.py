"""optuna-dashboard on a study, showing what each trial merged.

Before serving, each trial's merge config (its ``merge_config`` user attribute) becomes an
artifact of the trial (and its note, unless it has one) and the search spec becomes the study's
note, so clicking a trial in the dashboard shows the exact YAML to reproduce it. While the dashboard runs, trials that a live
search adds are attached every ``SYNC_SECONDS``.

Artifacts of finished trials cannot go through ``optuna.artifacts.upload_artifact`` (Optuna
refuses to touch a finished trial), so the metadata goes where optuna-dashboard also looks: a
study system attribute ``dashboard:artifacts:<trial_id>:<artifact_id>``. Artifact ids are derived
from (study, trial, config), so attaching twice is a no-op; the files live in
``<results>/artifacts/`` (for a database server, which has no results folder, in a temporary
folder removed when the dashboard stops: serving a study creates nothing in the working
directory).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import tempfile
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from mergesearch.search import attrs as A
from mergesearch.search.distributed.locate import StudyLocation
from mergesearch.search.distributed.storage import open_existing
from mergesearch.search.distributed.urls import hide_passwords
from mergesearch.search.errors import SpecError

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
ARTIFACT_PREFIX = (
    "dashboard:artifacts:"  # optuna-dashboard's key for trial artifacts in study attrs
)
SYNC_SECONDS = 30.0
NOTE_HEAD = "## mergesearch study"
NAMESPACE = uuid.UUID("6f1c2f4e-0c1e-4a53-9d0e-6d6572676573")


def artifact_name(number: int) -> str:
    return f"merge_config_trial_{number}.yaml"


def artifact_id(study: optuna.Study, number: int, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return str(uuid.uuid5(NAMESPACE, f"{study.study_name}/{number}/{digest}"))


def attach_merge_configs(study: optuna.Study, store_dir: Path) -> int:
    """Attach every trial's merge config as an artifact (once); return how many were added."""
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_dir))
    storage, study_id = study._storage, study._study_id
    present = storage.get_study_system_attrs(study_id)
    added = 0
    for trial in study.get_trials(deepcopy=False):
        text = trial.user_attrs.get(A.MERGE_CONFIG)
        if not text:
            continue
        aid = artifact_id(study, trial.number, text)
        key = f"{ARTIFACT_PREFIX}{trial._trial_id}:{aid}"
        if key in present and (store_dir / aid).is_file():
            continue
        store.write(aid, io.BytesIO(text.encode()))
        meta = {
            "artifact_id": aid,
            "filename": artifact_name(trial.number),
            "mimetype": "text/plain",  # shown in the browser, not downloaded as a blob
            "encoding": None,
        }
        storage.set_study_system_attr(study_id, key, json.dumps(meta))
        added += 1
    return added


def spec_note(study: optuna.Study) -> str | None:
    spec = hide_passwords(study.user_attrs.get(A.SPEC) or "")  # a study made before the rule
    if not spec:
        return None
    objectives = study.user_attrs.get(A.OBJECTIVES) or []
    lines = [f"{NOTE_HEAD} `{study.study_name}`", ""]
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


def set_spec_note(study: optuna.Study) -> bool:
    """Make the study note the search spec (unless it is, or a user wrote another); True when
    written."""
    from optuna_dashboard import get_note, save_note

    note, current = spec_note(study), get_note(study)
    if note is None or current == note:
        return False
    if current and not current.startswith(NOTE_HEAD):
        return False  # the user wrote this note: keep it
    save_note(study, note)
    return True


def set_trial_notes(study: optuna.Study) -> int:
    """Show each trial's merge config as its note, on the trial's page; notes that exist (a
    user's, or ours) are left alone. Returns how many were written."""
    # optuna-dashboard's public save_note takes a live optuna.Trial only; finished trials need
    # the versioned writer underneath it (a test reads the notes back through the REST API).
    from optuna_dashboard._note import note_ver_key, save_note_with_version

    storage, study_id = study._storage, study._study_id
    present = storage.get_study_system_attrs(study_id)
    written = 0
    for trial in study.get_trials(deepcopy=False):
        text = trial.user_attrs.get(A.MERGE_CONFIG)
        if not text or note_ver_key(trial._trial_id) in present:
            continue
        what = trial.user_attrs.get(A.BASELINE)
        head = f"Baseline `{what}`" if what else f"Trial {trial.number}"
        body = f"{head}: merge config (also attached as `{artifact_name(trial.number)}`)\n\n"
        save_note_with_version(storage, study_id, trial._trial_id, 1, f"{body}```yaml\n{text}```\n")
        written += 1
    return written


def name_metrics(study: optuna.Study) -> None:
    """Label the study values with objective names, where the search did not already."""
    if study.metric_names is not None:
        return
    infos = study.user_attrs.get(A.OBJECTIVES) or []
    if len(study.directions) == 1:
        names = [infos[0]["name"] if len(infos) == 1 else "weighted score"]
    elif len(infos) == len(study.directions):
        names = [o["name"] for o in infos]
    else:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def artifacts_folder(location: StudyLocation) -> Path | None:
    """``<results>/artifacts`` when the results folder exists (a study file's folder); ``None``
    for a database server, whose results folder would be a new ``results/<study>`` in the
    working directory: the dashboard only reads, so it keeps its files in a temporary folder."""
    if location.results_dir.is_dir():
        return location.results_dir / ARTIFACTS_DIR
    return None


def prepare(study: optuna.Study, location: StudyLocation, store_dir: Path | None = None) -> Path:
    """Attach artifacts, notes and metric names; return the artifact folder."""
    store_dir = store_dir or location.results_dir / ARTIFACTS_DIR
    added = attach_merge_configs(study, store_dir)
    set_spec_note(study)
    set_trial_notes(study)
    name_metrics(study)
    log.info("attached %d merge config(s) as trial artifacts in %s", added, store_dir)
    return store_dir


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise SpecError(
                f"--host {host} --port {port}: cannot listen there ({err.strerror}); "
                "pass another --port, or 0 for a free one"
            ) from None


@dataclass(frozen=True)
class Served:
    url: str
    host: str
    port: int
    artifacts: Path


def _keep_attaching(study: optuna.Study, store_dir: Path, stop: threading.Event) -> None:
    while not stop.wait(SYNC_SECONDS):
        try:
            attach_merge_configs(study, store_dir)
            set_trial_notes(study)
        except Exception as err:  # a busy database must not kill the dashboard
            log.debug("artifact sync skipped: %s", err)


def serve(
    study: optuna.Study,
    location: StudyLocation,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready=None,
) -> None:
    """Prepare the study, then run optuna-dashboard until interrupted (blocks).

    ``on_ready(Served)`` is called once the address is known, before serving starts.
    """
    with tempfile.TemporaryDirectory(prefix="mergesearch-artifacts-") as scratch:
        store_dir = prepare(study, location, artifacts_folder(location) or Path(scratch))
        _serve(study, location, store_dir, host, port, on_ready)


def _serve(
    study: optuna.Study,
    location: StudyLocation,
    store_dir: Path,
    host: str,
    port: int,
    on_ready,
) -> None:
    from optuna_dashboard import run_server

    if port:
        check_port(host, port)
    else:
        port = free_port(host)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/dashboard/studies/{study._study_id}"
    if on_ready is not None:
        on_ready(Served(url, host, port, store_dir))
    stop = threading.Event()
    thread = threading.Thread(
        target=_keep_attaching, args=(study, store_dir, stop), daemon=True, name="artifact-sync"
    )
    thread.start()
    try:
        run_server(
            open_existing(location.storage_url),  # a plain storage: no cache of this process
            host=host,
            port=port,
            artifact_store=FileSystemArtifactStore(str(store_dir)),
        )
    finally:
        stop.set()
