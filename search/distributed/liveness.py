"""Is the worker that claimed a trial still alive? On its own machine, this is known at once.

A worker on another machine can only be judged by its heartbeat: silent for the grace period,
it is taken for dead. A worker on this machine can be looked up: when its process is gone, its
trial can be failed and retried now instead of minutes later. Each claimed trial therefore
records which process runs it (``ProcessRecord``): host name, a machine identity, pid and the
process's start time.

The machine identity is the kernel's boot id plus the pid namespace: two containers may share
a host name (or run on one host with separate pid spaces), and a pid means something only in the
namespace that issued it. The start time tells a reused pid from the original process. A zombie
(killed, not yet reaped by its parent) is dead. Where ``/proc`` is missing the identity is empty
and the heartbeat rule alone applies.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
GONE_STATES = ("Z", "X")  # zombie, dead: the process ran its last instruction


@dataclass(frozen=True)
class ProcessRecord:
    host: str
    machine: str  # "" where this machine cannot identify itself: never judged locally
    pid: int
    started: int  # clock ticks after boot (``/proc/<pid>/stat``), 0 when unknown

    def to_attr(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attr(cls, value: Any) -> ProcessRecord | None:
        try:
            return cls(
                str(value["host"]), str(value["machine"]), int(value["pid"]), int(value["started"])
            )
        except (KeyError, TypeError, ValueError):
            return None


@functools.cache
def machine_id() -> str:
    """Boot id and pid namespace of this process, or ``""`` where ``/proc`` cannot tell."""
    try:
        boot = (PROC / "sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(PROC / "self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of ``pid``, ``None`` when no such process exists."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[19])


def this_process() -> ProcessRecord:
    pid = os.getpid()
    stat = _stat(pid) if machine_id() else None
    return ProcessRecord(socket.gethostname(), machine_id(), pid, stat[1] if stat else 0)


def dead_here(record: ProcessRecord) -> bool:
    """True only when ``record`` is a process of this machine that no longer runs."""
    if not record.machine or record.machine != machine_id():
        return False
    if record.host != socket.gethostname():
        return False
    stat = _stat(record.pid)
    if stat is None or stat[0] in GONE_STATES:
        return True
    return bool(record.started) and stat[1] != record.started  # the pid went to another process


def wait_unless_dead(records: Iterable[ProcessRecord], seconds: float, step: float = 0.25) -> bool:
    """Sleep up to ``seconds``; return early (True) as soon as one of the local ``records``
    is dead. Looking a process up costs a file read, not a database query."""
    local = [r for r in records if r.machine and r.machine == machine_id()]
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if any(dead_here(r) for r in local):
            return True
        time.sleep(min(step, left) if local else left)
    return False
