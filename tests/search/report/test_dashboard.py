"""``mergesearch dashboard``: optuna-dashboard on a study, each trial's merge config attached."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
from optuna_dashboard import get_note, save_note

from mergesearch.search.distributed.locate import open_study
from mergesearch.search.optimize.trials import pick_trial
from mergesearch.search.report import dashboard
from tests.helpers.fake_study import make_study
from tests.search.report.browser import needs_chromium, render

READY_TIMEOUT = 60


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_prepare_attaches_once_and_keeps_user_notes(tmp_path, single):
    _, _, models = single
    study, results, _ = make_study(tmp_path, name="notes", n_search=3, models=models)
    study, location = open_study(str(results))
    with_config = [t for t in study.trials if "merge_config" in t.user_attrs]

    store = dashboard.prepare(study, location)
    assert store == results / "artifacts"
    assert len(list(store.iterdir())) == len(with_config)
    assert dashboard.attach_merge_configs(study, store) == 0  # idempotent
    assert dashboard.set_trial_notes(study) == 0
    assert get_note(study).startswith(dashboard.NOTE_HEAD)
    assert "```yaml" in get_note(study) and "sources:" in get_note(study)
    assert study.metric_names == ["weighted score"]

    save_note(study, "my own notes")
    assert not dashboard.set_spec_note(study)
    assert get_note(study) == "my own notes"


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


@needs_chromium
def test_dashboard_serves_plots_and_artifacts(single, tmp_path):
    study, results, _ = single
    proc, url, seconds = _start(results, tmp_path)
    try:
        print(f"dashboard ready in {seconds:.1f} s at {url}")
        base = url.split("/dashboard/")[0]
        study_id = int(url.rsplit("/", 1)[1])
        detail = json.loads(_get(f"{base}/api/studies/{study_id}"))
        assert len(detail["trials"]) == len(study.trials)
        assert detail["note"]["body"].startswith(dashboard.NOTE_HEAD)
        chosen, _ = pick_trial(study)
        api_trial = next(t for t in detail["trials"] if t["number"] == chosen.number)
        (artifact,) = api_trial["artifacts"]
        assert artifact["filename"] == dashboard.artifact_name(chosen.number)
        link = f"/artifacts/{study_id}/{api_trial['trial_id']}/{artifact['artifact_id']}"
        assert _get(base + link).decode() == chosen.user_attrs["merge_config"]

        # the React UI renders plots of the study, and a trial's page links its merge config
        dom = render(url, tmp_path / "dashboard_study.png")
        assert dom.count('class="main-svg"') >= 2, "no plot drawn on the study page"
        assert "scatterlayer" in dom
        trial_page = f"{url}/trials?numbers={chosen.number}"
        dom = render(trial_page, tmp_path / "dashboard_trial.png", size=(1400, 1400))
        assert f"{len(study.trials)} Trials" in dom
        assert dashboard.artifact_name(chosen.number) in dom
        assert f'href="{link}"' in dom
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode in (0, 130, -signal.SIGINT)


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


def test_trial_notes_skip_trials_without_config(tmp_path):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert dashboard.set_trial_notes(study) == 0
    assert dashboard.attach_merge_configs(study, tmp_path / "artifacts") == 0
    assert dashboard.spec_note(study) is None
