"""Faults while running: Ctrl+C in a search, SIGKILL in a merge, a full disk, a read-only folder.

Each leaves either a complete result or nothing that looks like one, and says so in one line.
(SIGKILL during ``export`` is ``tests/search/export/test_export.py::test_killed_export_leaves_nothing_
complete``.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mergesearch.merging.atomic import TEMP_MARK
from mergesearch.search.cli import main
from tests.hardening.helpers import tree
from tests.helpers.specs import make_spec
from tests.helpers.tiny_models import make_llama_family

REPO = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "faults"


def _cli(*argv: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mergesearch", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(check, proc: subprocess.Popen, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.01)


# ---------------------------------------------------------------------------- Ctrl+C


def test_sigint_fails_the_running_trial_and_the_same_command_resumes(models, tmp_path, monkeypatch):
    paths = {"base": str(models["base"]), "a": str(models["a"]), "b": str(models["b"])}
    spec = make_spec(paths, tmp_path, budget={"trials": 7})
    spec["objectives"][0]["options"]["callable"] = "tests.hardening.helpers:slow_score"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    calls = tmp_path / "calls"
    proc = _cli("search", str(spec_path), "--no-progress", env={"HARDENING_CALLS": str(calls)})
    _wait_for(lambda: calls.is_dir() and len(list(calls.iterdir())) >= 3, proc, "scored 3")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("mergesearch: interrupted")
    study = optuna.load_study(study_name="t", storage=spec["storage"])
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    interrupted = [t for t in study.trials if t.user_attrs.get("fail_reason") == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL
    assert sum(s == TrialState.COMPLETE for s in states) == 2

    monkeypatch.setenv("HARDENING_CALLS", str(calls))
    monkeypatch.setenv("HARDENING_SLEEP", "0")
    assert main(["search", str(spec_path), "--no-progress"]) == 0
    study = optuna.load_study(study_name="t", storage=spec["storage"])
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 7  # the interrupted trial did not count against the budget
    assert len(study.trials) == 8


# ---------------------------------------------------------------------------- SIGKILL


def test_sigkill_during_merge_leaves_nothing_that_looks_complete(tmp_path):
    base, a, b = make_llama_family(
        tmp_path / "big", hidden_size=256, intermediate_size=1024, num_hidden_layers=8
    )
    config = tmp_path / "merge.yaml"
    models = [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.5}} for m in (a, b)]
    data = {"models": models, "merge_method": "ties", "base_model": str(base)}
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "out" / "merged"
    argv = ["merge", str(config), str(out), "--out-shard-size", "1M", "--threads", "1"]
    proc = _cli(*argv, "--no-progress")
    staging = out.parent / f".merged{TEMP_MARK}{proc.pid}"
    _wait_for(lambda: len(list(staging.glob("*.safetensors"))) >= 2, proc, "wrote a shard")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()

    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()]
    assert leftovers and all(name.startswith(".") and TEMP_MARK in name for name in leftovers)
    assert main([*argv, "--no-progress"]) == 0  # the next run removes the dead one's folder
    assert [p.name for p in out.parent.iterdir()] == ["merged"]
    assert (out / "model.safetensors.index.json").is_file()


# ---------------------------------------------------------------------------- disk full


@pytest.mark.parametrize("command", ["merge", "export"])
def test_no_space_left_is_one_line_and_leaves_nothing(command, models, study, tmp_path):
    out = tmp_path / "out"
    if command == "merge":
        config = tmp_path / "merge.yaml"
        refs = [{"model": str(models[k]), "parameters": {"weight": 0.5}} for k in ("a", "b")]
        config.write_text(yaml.safe_dump({"models": refs, "merge_method": "linear"}))
        argv = ["merge", str(config), str(out)]
    else:
        argv = ["export", str(study), "--out", str(out)]
    before = tree(study)
    env = {
        "PYTHONPATH": f"{FAULTS}{os.pathsep}{REPO}",
        "MERGESEARCH_TEST_ENOSPC": f"{tmp_path}:40000",
    }
    proc = _cli(*argv, "--no-progress", env=env)
    _, err = proc.communicate(timeout=300)

    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and str(out) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["merge.yaml"] if command == "merge" else []
    )
    assert tree(study) == before


def test_disk_full_mid_search_stops_in_one_line_and_the_study_resumes(
    models, tmp_path, monkeypatch
):
    """The disk fills up while trial 3 is evaluated: every write to the study fails from then
    on. The search stops with one line (exit 1), no finished trial is touched, and the same
    command, once there is room again, retries the stopped trial at once (its process is gone
    on this machine: no heartbeat grace period) and completes the budget."""
    paths = {"base": str(models["base"]), "a": str(models["a"]), "b": str(models["b"])}
    spec = make_spec(paths, tmp_path, budget={"trials": 7})  # default heartbeat: 30 s, 120 s
    spec["objectives"][0]["options"]["callable"] = "tests.hardening.helpers:slow_score"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    calls, full = tmp_path / "calls", tmp_path / "disk-is-full"
    env = {
        "PYTHONPATH": f"{FAULTS}{os.pathsep}{REPO}",
        "MERGESEARCH_TEST_DB_FULL": str(full),
        "HARDENING_CALLS": str(calls),
    }
    proc = _cli("search", str(spec_path), "--no-progress", env=env)
    _wait_for(lambda: calls.is_dir() and len(list(calls.iterdir())) >= 3, proc, "scored 3")
    full.touch()
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 1, err
    *progress, last = err.strip().splitlines()  # the trial log lines, then the one error line
    assert "Traceback" not in err and "Error" not in err, err
    assert last.startswith("mergesearch search: error: storage sqlite:///"), err
    assert "no space left on device during trial 2" in last and "run the same command" in last
    assert not [line for line in progress if "error" in line], err
    study = optuna.load_study(study_name="t", storage=spec["storage"])
    before = {t.number: (t.state, t.values, t.datetime_complete) for t in study.trials}
    states = [state for state, _, _ in before.values()]
    done = [n for n, state in enumerate(states) if state == TrialState.COMPLETE]
    # the trial the disk stopped could not be marked either (every write fails): it stays
    # running until the next run; the rest are finished or queued (baselines), nothing between
    stopped = [n for n, state in enumerate(states) if state == TrialState.RUNNING]
    assert len(done) == 2 and stopped == [2]
    assert set(states) == {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}

    full.unlink()  # room again
    monkeypatch.setenv("HARDENING_CALLS", str(calls))
    monkeypatch.setenv("HARDENING_SLEEP", "0")
    started = time.monotonic()
    assert main(["search", str(spec_path), "--no-progress"]) == 0
    assert time.monotonic() - started < 60  # far below the 120 s grace period
    study = optuna.load_study(study_name="t", storage=spec["storage"])
    trials = study.trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 7
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number in done:  # finished trials are kept as they were
        assert (trials[number].state, trials[number].values) == before[number][:2]
        assert trials[number].datetime_complete == before[number][2]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == stopped[0]]
    assert trials[stopped[0]].state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == trials[stopped[0]].params


def test_status_into_a_closed_pipe_ends_quietly(study, tmp_path):
    """``mergesearch status ... | head``: the reader leaves early; no traceback, exit 141 as
    for any command killed by SIGPIPE, nothing on stderr."""
    python = f"{sys.executable} -m mergesearch"
    script = f"{python} status {study} | true; echo $" + "{PIPESTATUS[0]} >&2"
    run = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stderr.strip() == "141", run.stderr


# ---------------------------------------------------------------------------- read-only


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write to, root included: ``chmod`` for users, ``chattr +i`` for
    root (whom permission bits do not stop). Skips where neither works."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)]).returncode != 0:
        pytest.skip(
            "running as root and chattr +i is unavailable: no way to make a folder read-only"
        )
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_read_only_results_folder(read_only, models, study, tmp_path, capsys):
    checks = {
        "export": (["export", str(study), "--out", str(read_only / "best"), "--no-progress"], 2),
        "report": (["report", str(study), "--out", str(read_only)], 1),
    }
    paths = {"base": str(models["base"]), "a": str(models["a"]), "b": str(models["b"])}
    spec = make_spec(paths, read_only, budget={"trials": 5})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    checks["search"] = (["search", str(tmp_path / "spec.yaml"), "--no-progress"], 2)
    for command, (argv, code) in checks.items():
        assert main(argv) == code, command
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mergesearch {command}: error: ") and str(read_only) in err, err
        assert "\n" not in err and ("not permitted" in err or "denied" in err), err
        assert list(read_only.iterdir()) == []


def test_search_from_a_read_only_working_directory(read_only, models, tmp_path, capsys):
    """The default storage (``results/<study>/study.db``) cannot be created there: one line,
    exit 2, nothing written."""
    paths = {"base": str(models["base"]), "a": str(models["a"]), "b": str(models["b"])}
    spec = make_spec(paths, tmp_path, budget={"trials": 5})
    del spec["storage"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cwd = Path.cwd()
    os.chdir(read_only)
    try:
        assert main(["search", str(tmp_path / "spec.yaml"), "--no-progress"]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mergesearch search: error: {read_only}/results/t: cannot create"), err
    assert "\n" not in err and "--storage" in err
    assert list(read_only.iterdir()) == []
