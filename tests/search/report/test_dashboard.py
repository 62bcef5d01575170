"""``mergesearch dashboard``: optuna-dashboard on a study, read-only, each trial's merge config
attached by the search."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note

from mergesearch.search import attrs as A
from mergesearch.search.distributed.readonly import ReadOnlyError, open_read_only
from mergesearch.search.optimize.attachments import NOTE_HEAD, artifact_meta, artifact_name
from mergesearch.search.optimize.trials import pick_trial
from mergesearch.search.report.dashboard import ConfigArtifacts
from tests.helpers.fake_study import make_study
from tests.search.report.browser import needs_chromium, render

READY_TIMEOUT = 60


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_search_attaches_configs_names_values_and_notes_the_spec(family, tmp_path):
    from mergesearch.search import run_search
    from tests.helpers.specs import make_spec

    result = run_search(make_spec(family, tmp_path, budget={"trials": 6}), progress=False)
    study = result.study
    for trial in study.trials:
        key, meta = artifact_meta("t", trial.number, trial.user_attrs[A.MERGE_CONFIG])
        assert trial.system_attrs[key] == meta
        assert json.loads(meta)["filename"] == artifact_name(trial.number)
    assert study.metric_names == ["probe"]
    assert get_note(study).startswith(NOTE_HEAD) and "```yaml" in get_note(study)


def test_read_only_storage_reads_everything_and_writes_nothing(single, tmp_path):
    study, results, _ = single
    db = results / "study.db"
    before = _digest(db)
    storage = open_read_only(f"sqlite:///{db}")
    (summary,) = storage.get_all_studies()
    trials = storage.get_all_trials(summary._study_id)
    assert [t.number for t in trials] == [t.number for t in study.trials]
    for write in (
        lambda: storage.set_study_user_attr(summary._study_id, "x", 1),
        lambda: storage.set_trial_user_attr(trials[0]._trial_id, "x", 1),
        lambda: storage.create_new_trial(summary._study_id),
    ):
        with pytest.raises(ReadOnlyError, match="read-only"):
            write()
    # the artifact store finds each config from its id alone, and stores nothing
    store = ConfigArtifacts(storage)
    for trial in trials:
        text = trial.user_attrs[A.MERGE_CONFIG]
        key, _ = artifact_meta(summary.study_name, trial.number, text)
        assert store.open_reader(key.split(":", 1)[1]).read().decode() == text
    assert _digest(db) == before


def _start(results: Path, tmp_path: Path) -> tuple[subprocess.Popen, str, float]:
    log = (tmp_path / "dashboard.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergesearch", "dashboard", str(results)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)(/dashboard/studies/\d+)", line)
    assert match, f"no URL printed: {line!r}"
    base = match[1]
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            _get(f"{base}/api/meta")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(
                    f"dashboard did not come up: {(tmp_path / 'dashboard.log').read_text()}"
                ) from None
            time.sleep(0.2)
    return proc, match[0], time.perf_counter() - started


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


@needs_chromium
def test_dashboard_serves_plots_and_artifacts_and_leaves_the_study_byte_identical(family, tmp_path):
    models = {"base": Path(family["base"]), "rev": Path(family["a"]), "up": Path(family["b"])}
    study, results, _ = make_study(tmp_path, name="viewed", n_search=3, models=models)
    db = results / "study.db"
    del study  # the search is over: its connections close, as when a user opens the dashboard
    optuna.storages.RDBStorage(f"sqlite:///{db}").engine.dispose()
    before, files_before = _digest(db), sorted(p.name for p in results.iterdir())

    proc, url, seconds = _start(results, tmp_path)
    try:
        print(f"dashboard ready in {seconds:.1f} s at {url}")
        base = url.split("/dashboard/")[0]
        study_id = int(url.rsplit("/", 1)[1])
        detail = json.loads(_get(f"{base}/api/studies/{study_id}"))
        assert detail["note"]["body"].startswith(NOTE_HEAD)
        # every trial's merge config is served from the study, by the artifact's link
        for api_trial in detail["trials"]:
            (artifact,) = api_trial["artifacts"]
            number = api_trial["number"]
            assert artifact["filename"] == artifact_name(number)
            link = f"/artifacts/{study_id}/{api_trial['trial_id']}/{artifact['artifact_id']}"
            text = _get(base + link).decode()
            assert text.startswith("merge_method:") or "merge_method:" in text
        # a write through the UI's API is refused, and nothing is saved
        request = urllib.request.Request(
            f"{base}/api/studies/{study_id}/note",
            data=json.dumps({"version": 2, "body": "mine"}).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)

        # the React UI renders plots of the study, and every trial's page links its config
        dom = render(url, tmp_path / "dashboard_study.png")
        assert dom.count('class="main-svg"') >= 2, "no plot drawn on the study page"
        assert "scatterlayer" in dom
        for api_trial in detail["trials"]:
            number = api_trial["number"]
            dom = render(f"{url}/trials?numbers={number}", budget_ms=4000)
            assert f"{len(detail['trials'])} Trials" in dom
            assert artifact_name(number) in dom
    finally:
        _stop(proc)
    assert proc.returncode in (0, 130, -signal.SIGINT)
    assert _digest(db) == before, "opening the dashboard changed the study"
    after = sorted(p.name for p in results.iterdir())
    assert [f for f in after if f not in files_before and not f.endswith(("-wal", "-shm"))] == []


def test_the_chosen_trial_has_its_artifact_in_a_shared_study(single):
    study, _, _ = single
    chosen, _ = pick_trial(study)
    key, meta = artifact_meta(study.study_name, chosen.number, chosen.user_attrs[A.MERGE_CONFIG])
    assert chosen.system_attrs[key] == meta


def test_dashboard_refuses_a_busy_port(single, tmp_path, capsys):
    import socket

    from mergesearch.search.cli import main

    _, results, _ = single
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["dashboard", str(results), "--port", str(port)]) == 2
    assert f"--port {port}: cannot listen there" in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.skipif(
    not os.environ.get("MERGESEARCH_TEST_POSTGRES_URL"),
    reason="MERGESEARCH_TEST_POSTGRES_URL is unset (.ci/run starts PostgreSQL and exports it)",
)
def test_a_shared_postgresql_study_is_served_read_only():
    import uuid

    url = os.environ["MERGESEARCH_TEST_POSTGRES_URL"]
    name = f"viewed-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=url)
    text = "merge_method: linear\nmodels:\n- model: a\n"
    trial = study.ask()
    trial.set_user_attr(A.MERGE_CONFIG, text)
    from mergesearch.search.optimize.attachments import attach_config

    attach_config(trial, text)
    study.tell(trial, 1.0)
    try:
        storage = open_read_only(url)
        study_id = storage.get_study_id_from_name(name)
        (frozen,) = storage.get_all_trials(study_id)
        key, _ = artifact_meta(name, 0, text)
        assert ConfigArtifacts(storage).open_reader(key.split(":", 1)[1]).read().decode() == text
        with pytest.raises(ReadOnlyError):
            storage.set_study_user_attr(study_id, "viewer", "was here")
        with pytest.raises(ReadOnlyError):
            storage.set_trial_system_attr(frozen._trial_id, "dashboard:note", "x")
        assert "viewer" not in optuna.load_study(study_name=name, storage=url).user_attrs
    finally:
        optuna.delete_study(study_name=name, storage=url)
