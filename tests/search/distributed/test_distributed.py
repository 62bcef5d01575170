"""Distributed search on a real PostgreSQL server: worker processes, one study.

Every test starts real ``mergesearch search`` processes (no mocks) on the tiny family of
``conftest.py``, scored by ``tests.search.distributed.dist_probe`` (the probe, plus a per-call delay so that
trials overlap, a start barrier so that every worker takes part, and a hold so that a worker can
be killed in the middle of a trial). Each PostgreSQL test gets a fresh, empty database, dropped
afterwards. Heartbeats every second with a 3 s grace period keep the dead-worker tests short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool

from mergesearch.search import attrs as A
from mergesearch.search.distributed.budget import reap_unclaimed, spent
from mergesearch.search.distributed.storage import open_storage, retry_once
from mergesearch.search.optimize.summary import best_trials
from tests.helpers.specs import make_spec
from tests.search.distributed.dist_probe import HOLD_ENV

REPO = Path(__file__).resolve().parents[3]
PG_URL = os.environ.get("MERGESEARCH_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not PG_URL,
    reason="MERGESEARCH_TEST_POSTGRES_URL is unset: start the server with "
    "`bash .ci/start-postgres.sh` and export the URL (.ci/run does both)",
)
BASELINES = ["a", "average", "b", "base"]
GRACE = 3  # seconds; heartbeat every second
PROCESS_TIMEOUT = 180


@pytest.fixture
def fresh_db() -> str:
    """The URL of a new, empty database on the test server (dropped afterwards)."""
    admin = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"ms_dist_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sqlalchemy.engine.make_url(PG_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_spec(
    family, tmp_path: Path, storage: str, *, trials: int = 24, delay: float = 0.1, barrier: int = 0
) -> Path:
    options = {"delay": delay, "barrier_dir": str(tmp_path / "barrier"), "barrier_n": barrier}
    spec = make_spec(
        family,
        tmp_path,
        storage=storage,
        budget={"trials": trials},
        heartbeat={"interval": 1, "grace_period": GRACE},
        objectives=[
            {
                "name": "probe",
                "evaluator": "python",
                "metric": "probe/score",
                "options": {
                    "callable": "tests.search.distributed.dist_probe:score",
                    "options": options,
                },
                "splits": {"search": {}},
            }
        ],
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class Workers:
    """``mergesearch search`` processes, each logging to its own file."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp_path / f"worker{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "mergesearch", "search", *args],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def wait(self, procs: list[subprocess.Popen] | None = None) -> list[int]:
        return [p.wait(timeout=PROCESS_TIMEOUT) for p in (procs or self.procs)]

    def logs(self) -> str:
        return "\n".join(
            f"--- worker {i}\n{(self.tmp_path / f'worker{i}.log').read_text()[-3000:]}"
            for i in range(len(self.procs))
        )

    def kill_all(self) -> None:
        """SIGKILL every worker at once: one killed after another would give the survivor a
        moment to find the first one dead (by its pid) and take over its trial."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()


@pytest.fixture
def workers(tmp_path):
    group = Workers(tmp_path)
    yield group
    group.kill_all()


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=open_storage(url))


def wait_until(condition, what: str, timeout: float = 120.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def completed(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def n_completed(url: str) -> int:
    """Completed trials so far; 0 while the workers are still starting (no study yet)."""
    try:
        return len(completed(load(url)))
    except KeyError:
        return 0


def assert_budget_exact(study: optuna.Study, budget: int) -> None:
    """Exactly ``budget`` completed trials, each baseline once, nothing left in flight, the
    best trial the best of the completed ones, every dead trial retried once with its params
    (and so its merge config) by a completed trial."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    done = completed(study)
    assert len(done) == budget == spent(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sorted(t.user_attrs["baseline"] for t in done if "baseline" in t.user_attrs) == BASELINES
    dead = [t for t in trials if t.state == TrialState.FAIL]
    retries = {
        t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs
    }
    assert sorted(retries) == sorted(t.number for t in dead)  # each dead trial retried once
    for original in dead:
        retry = retries[original.number]
        assert retry.state == TrialState.COMPLETE
        # killed while the sampler was still suggesting, the original has only some parameters
        assert {k: retry.params[k] for k in original.params} == original.params
        if "merge_config" in original.user_attrs:
            assert retry.user_attrs["merge_config"] == original.user_attrs["merge_config"]
        assert retry.user_attrs.get("baseline") == original.user_attrs.get("baseline")
    searched = [t for t in done if "baseline" not in t.user_attrs]
    (best,) = best_trials(study)
    assert best.values[0] == max(t.values[0] for t in searched)


@needs_postgres
def test_many_openers_on_an_empty_database_at_once(fresh_db):
    """The schema race: raw ``RDBStorage(url)`` from 5 threads (5 connections) released by one
    barrier failed in 4 of them here (``UniqueViolation`` on ``pg_type_typname_nsp_index``);
    ``open_storage`` must not fail in any. Processes race the same way (the 3-worker test)."""
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def opener() -> None:
        barrier.wait()
        try:
            open_storage(fresh_db)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PROCESS_TIMEOUT)
    assert not errors, errors
    optuna.create_study(study_name="t", storage=fresh_db)  # the schema is whole
    assert [s.study_name for s in optuna.get_all_study_summaries(fresh_db)] == ["t"]


@needs_postgres
def test_three_workers_started_together_on_an_empty_database(family, tmp_path, fresh_db, workers):
    spec = write_spec(family, tmp_path, fresh_db, barrier=3)
    for _ in range(3):
        workers.start(str(spec), "--no-progress")
    assert workers.wait() == [0, 0, 0], workers.logs()

    study = load(fresh_db)
    trials = study.trials
    assert [t.number for t in trials] == list(range(24))  # not one trial too many
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert_budget_exact(study, 24)
    assert study.user_attrs[A.WORKERS_JOINED] == 3
    by_worker = {t.user_attrs[A.WORKER] for t in trials}
    assert len(by_worker) == 3  # the barrier made each of them run trials
    # distinct sampler seeds: the workers did not propose the same candidates
    hashes = [t.user_attrs["config_hash"] for t in trials if "baseline" not in t.user_attrs]
    assert len(set(hashes)) == len(hashes)


@needs_postgres
def test_a_killed_worker_s_trial_is_failed_and_retried_elsewhere(
    family, tmp_path, fresh_db, workers
):
    spec = write_spec(family, tmp_path, fresh_db, delay=0.15, barrier=3)
    # The first worker hangs inside its 5th evaluation: a search trial (there are 4 baselines).
    doomed = workers.start(str(spec), "--no-progress", env={HOLD_ENV: "4"})
    others = [workers.start(str(spec), "--no-progress") for _ in range(2)]
    wait_until(lambda: list((tmp_path / "barrier").glob("held-*")), "the held trial")

    def held_trial():
        running = load(fresh_db).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [t for t in running if t.user_attrs.get(A.WORKER, "").endswith(f":{doomed.pid}")]

    (held,) = held_trial()
    assert "baseline" not in held.user_attrs and "merge_config" in held.user_attrs
    doomed.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(
        lambda: load(fresh_db).trials[held.number].state == TrialState.FAIL,
        "the stale trial",
        every=0.1,
    )
    assert time.monotonic() - killed_at < GRACE + 1 + 6  # grace + a beat + a poll, loaded CPU
    assert workers.wait(others) == [0, 0], workers.logs()
    assert doomed.wait() == -signal.SIGKILL

    study = load(fresh_db)
    assert_budget_exact(study, 24)
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == held.number]
    assert retry.number > held.number
    assert retry.params == held.params
    assert retry.user_attrs["merge_config"] == held.user_attrs["merge_config"]
    assert retry.user_attrs[A.WORKER] != held.user_attrs[A.WORKER]
    assert "duplicate_of" not in retry.user_attrs  # evaluated again, not answered from the study
    assert len(study.trials) == 25  # 24 counted and the dead one


@needs_postgres
def test_all_workers_killed_then_one_restarted_finishes_the_budget(
    family, tmp_path, fresh_db, workers
):
    spec = write_spec(family, tmp_path, fresh_db, delay=0.2, barrier=2)
    for _ in range(2):
        workers.start(str(spec), "--no-progress")
    wait_until(lambda: n_completed(fresh_db) >= 8, "trials of both workers")
    workers.kill_all()
    before = load(fresh_db)
    assert 8 <= len(completed(before)) < 24
    finished = {t.number: t.values for t in completed(before)}

    restarted = workers.start(str(spec), "--no-progress")
    assert workers.wait([restarted]) == [0], workers.logs()
    study = load(fresh_db)
    assert_budget_exact(study, 24)
    for number, values in finished.items():  # nothing finished was run or counted again
        assert study.trials[number].values == values
    assert study.user_attrs[A.WORKERS_JOINED] == 3


def test_journal_storage_with_two_local_workers(family, tmp_path):
    journal = tmp_path / "journal.log"
    spec = write_spec(family, tmp_path, f"journal:{journal}", trials=12, barrier=2)
    run = subprocess.run(
        [sys.executable, "-m", "mergesearch", "search", str(spec), "--workers", "2"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[w0]" in run.stderr and "[w1]" in run.stderr
    assert "worker 0" in run.stdout and "worker 1" in run.stdout and "best" in run.stdout
    study = load(f"journal:{journal}")
    assert [t.number for t in study.trials] == list(range(12))
    assert_budget_exact(study, 12)
    assert len({t.user_attrs[A.WORKER] for t in study.trials}) == 2


def test_parent_forwards_sigterm_and_reports_a_crash(tmp_path):
    """The ``--workers`` parent with stand-in workers (no torch to import): SIGTERM to the
    parent reaches every worker still running; one crashed worker makes the exit code 1."""
    from mergesearch.search.distributed import workers

    child = (
        "import os, signal, sys, time\n"
        "if os.environ['MERGESEARCH_WORKER'] == '0': sys.exit(1)\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    started = workers.start_workers([], 3, 1, program=[sys.executable, "-c", child])
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    began = time.monotonic()
    codes = workers.wait_for(started)
    timer.join()
    assert codes == [1, 130, 130] and time.monotonic() - began < 30
    assert workers.exit_code(codes) == 1
    assert workers.exit_code([0, 130]) == 130 and workers.exit_code([0, 0]) == 0
    assert workers.exit_code([0, -9]) == 1
    assert workers.threads_per_worker(8, 3) == max(1, min(8, workers.cores() // 3))


def test_what_counts_against_the_budget():
    """Complete, pruned, failed and claimed running trials count; an interrupted trial, a dead
    worker's trial that was re-queued, and queued trials do not."""
    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state, user_attrs=None, system_attrs=None, **kw):
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params={"x": 0.5},
                distributions=dist,
                user_attrs=user_attrs or {},
                system_attrs=system_attrs or {},
                **kw,
            )
        )

    add(TrialState.COMPLETE, value=1.0)  # 0: counts
    add(TrialState.PRUNED)  # 1: counts
    add(TrialState.FAIL, {"fail_reason": "evaluation: boom"})  # 2: counts
    add(TrialState.FAIL, {"fail_reason": "interrupted"})  # 3: replaced, not counted
    add(TrialState.FAIL)  # 4: dead worker, re-queued as 5: not counted
    add(TrialState.WAITING, system_attrs={"failed_trial": 4, "retry_history": [4]})  # 5: queued
    add(TrialState.RUNNING, {A.WORKER: "host:1"})  # 6: claimed and running: counts
    add(TrialState.RUNNING)  # 7: unclaimed, to be reaped: not counted
    assert spent(study.trials) == 4
    assert reap_unclaimed(study, retry_once()) == 1
    trials = study.trials
    assert trials[7].state == TrialState.FAIL
    assert trials[8].state == TrialState.WAITING and trials[8].system_attrs["failed_trial"] == 7
    assert spent(trials) == 4


def test_heartbeat_settings_are_checked(tmp_path, family):
    from mergesearch.search.errors import SpecError
    from mergesearch.search.spec.load import load_spec

    spec = make_spec(family, tmp_path)
    assert load_spec(spec).heartbeat.grace == 120  # four intervals of 30 s
    assert load_spec(spec, heartbeat=5).heartbeat.grace == 20
    with pytest.raises(SpecError, match=r"grace_period .* must be longer than interval"):
        load_spec(spec, heartbeat=10, grace_period=10)


def _default_heartbeat_spec(family, tmp_path: Path, storage: str, barrier: int) -> Path:
    """The spec of ``write_spec`` with the default heartbeat (every 30 s, grace 120 s)."""
    path = write_spec(family, tmp_path, storage, delay=0.3, barrier=barrier)
    spec = yaml.safe_load(path.read_text())
    del spec["heartbeat"]
    path.write_text(yaml.safe_dump(spec))
    return path


def _retry_running(url: str, number: int):
    """The retry of trial ``number`` once it runs (or ran), else None."""
    for trial in load(url).trials:
        if trial.system_attrs.get("failed_trial") == number and trial.state in (
            TrialState.RUNNING,
            TrialState.COMPLETE,
        ):
            return trial
    return None


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_a_killed_worker_on_this_machine_is_retried_within_seconds(
    backend, family, tmp_path, workers, request
):
    """Default heartbeat settings (a dead worker elsewhere is found after 120 s): a SIGKILLed
    worker of this machine is found by its pid at once, and its trial runs again within 5 s
    on a surviving worker; the budget still comes out exact."""
    url = request.getfixturevalue("fresh_db") if backend == "postgresql" else None
    url = url or f"sqlite:///{tmp_path / 'study.db'}"
    spec = _default_heartbeat_spec(family, tmp_path, url, barrier=2)
    doomed = workers.start(str(spec), "--no-progress", env={HOLD_ENV: "4"})
    survivor = workers.start(str(spec), "--no-progress")
    wait_until(lambda: list((tmp_path / "barrier").glob("held-*")), "the held trial")
    running = load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    (held,) = [t for t in running if t.user_attrs[A.WORKER].endswith(f":{doomed.pid}")]

    doomed.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    retry = wait_until(lambda: _retry_running(url, held.number), "the retry", every=0.05)
    seconds = time.monotonic() - killed_at
    print(f"\n{backend}: SIGKILL to retry running on the survivor: {seconds:.2f} s")
    assert seconds < 5, seconds
    assert retry.params == held.params
    assert retry.user_attrs[A.MERGE_CONFIG] == held.user_attrs[A.MERGE_CONFIG]
    assert workers.wait([survivor]) == [0], workers.logs()
    assert_budget_exact(load(url), 24)


def test_the_rerun_after_a_kill_does_not_wait_for_the_grace_period(family, tmp_path, workers):
    """The only worker is killed; the same command started again retries its trial at once
    (its process is gone on this machine) instead of after the 120 s grace period."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = _default_heartbeat_spec(family, tmp_path, url, barrier=1)
    doomed = workers.start(str(spec), "--no-progress", env={HOLD_ENV: "4"})
    wait_until(lambda: list((tmp_path / "barrier").glob("held-*")), "the held trial")
    (held,) = load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    doomed.send_signal(signal.SIGKILL)
    assert doomed.wait() == -signal.SIGKILL
    started = time.monotonic()
    rerun = workers.start(str(spec), "--no-progress")
    wait_until(lambda: _retry_running(url, held.number), "the retry", every=0.05)
    seconds = time.monotonic() - started
    print(f"\nrerun start to retry running (process start-up included): {seconds:.2f} s")
    assert seconds < 60  # start-up and imports; the grace period alone would be 120 s
    assert workers.wait([rerun]) == [0], workers.logs()
    assert_budget_exact(load(url), 24)


@needs_postgres
@pytest.mark.parametrize("inner", ["tpe", "shared-cmaes"])
def test_two_workers_share_the_method_portfolio(family, tmp_path, fresh_db, workers, inner):
    """``sampler: auto`` over three methods, two workers on one PostgreSQL study: the budget is
    exact, every method gets its warm-up, and each trial's method is recorded for the other;
    with a sampler per method and with one CMA-ES that both workers share through the study."""
    path = write_spec(family, tmp_path, fresh_db, trials=28, barrier=2)
    spec = yaml.safe_load(path.read_text())
    spec["methods"] = ["ties", "linear", "task_arithmetic"]
    spec["sampler"] = {"name": "auto", "seed": 0, "options": {"inner": inner}}
    path.write_text(yaml.safe_dump(spec))
    for _ in range(2):
        workers.start(str(path), "--no-progress")
    assert workers.wait() == [0, 0], workers.logs()

    study = load(fresh_db)
    assert_budget_exact(study, 28)
    searched = [t for t in completed(study) if "baseline" not in t.user_attrs]
    per_method: dict[str, int] = {}
    for trial in searched:
        assert trial.system_attrs[A.PORTFOLIO_METHOD] == trial.params["method"]
        per_method[trial.params["method"]] = per_method.get(trial.params["method"], 0) + 1
    warmup = 2  # 24 search trials over 3 methods
    assert set(per_method) == {"ties", "linear", "task_arithmetic"}
    assert min(per_method.values()) >= warmup  # no method starved
    assert len({t.user_attrs[A.WORKER] for t in searched}) == 2
