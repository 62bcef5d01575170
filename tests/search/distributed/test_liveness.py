"""Which claimed trials are dead at once (their process is gone on this machine) and which keep
the heartbeat rule (another machine, another pid namespace, or no record)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from mergesearch.search import attrs as A
from mergesearch.search.distributed.budget import reap_dead_here
from mergesearch.search.distributed.liveness import (
    ProcessRecord,
    dead_here,
    machine_id,
    this_process,
    wait_unless_dead,
)
from mergesearch.search.distributed.storage import retry_once

pytestmark = pytest.mark.skipif(not machine_id(), reason="no /proc: only the heartbeat rule")


@pytest.fixture
def gone() -> ProcessRecord:
    """The record of a process of this machine that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    record = dataclasses.replace(this_process(), pid=child.pid, started=0)
    child.kill()
    child.wait()
    return record


def test_this_process_is_alive_and_a_reaped_one_is_dead(gone):
    me = this_process()
    assert me.machine and me.started > 0 and not dead_here(me)
    assert dead_here(gone)


def test_a_zombie_is_dead_and_a_reused_pid_is_not_the_same_process():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    record = dataclasses.replace(this_process(), pid=child.pid, started=0)
    while os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT) is None:  # exited, unreaped
        time.sleep(0.01)
    assert dead_here(record)  # a zombie: killed, its parent has not waited yet
    child.wait()
    me = this_process()
    assert dead_here(dataclasses.replace(me, started=me.started + 1))  # same pid, other start


def test_other_machines_and_unknown_ones_are_never_judged(gone):
    assert not dead_here(dataclasses.replace(gone, machine="other-boot/pid:[1]"))
    assert not dead_here(dataclasses.replace(gone, host="another-host"))
    assert not dead_here(dataclasses.replace(gone, machine=""))  # no /proc where it ran


def test_reap_fails_and_retries_only_the_dead_of_this_machine(gone):
    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    elsewhere = dataclasses.replace(gone, machine="other-boot/pid:[1]")
    for record in (gone, elsewhere, this_process(), None):
        attrs = {A.WORKER: "h:1"}
        if record is not None:
            attrs[A.WORKER_PROCESS] = record.to_attr()
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.RUNNING, params={"x": 0.5}, distributions=dist, user_attrs=attrs
            )
        )
    assert reap_dead_here(study, retry_once()) == 1
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL] + [TrialState.RUNNING] * 3 + [TrialState.WAITING]
    retry = study.trials[-1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == {"x": 0.5}
    assert reap_dead_here(study, retry_once()) == 0  # once only


def test_waiting_ends_as_soon_as_a_local_worker_dies(gone):
    started = time.monotonic()
    assert wait_unless_dead([this_process()], 0.3) is False
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert wait_unless_dead([this_process(), gone], 30) is True
    assert time.monotonic() - started < 1
    assert ProcessRecord.from_attr(gone.to_attr()) == gone
    assert ProcessRecord.from_attr({"host": "h"}) is None
