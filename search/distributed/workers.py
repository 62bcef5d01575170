"""``mergesearch search --workers N``: N worker processes on this machine, one study.

Each worker is a plain ``mergesearch search`` process on the same storage and study name, the
same command a user runs on another machine; this parent only starts them, forwards Ctrl-C and
SIGTERM, prefixes their output with ``[wI]``, waits, and reports. Processes rather than threads:
the merge and the evaluators hold the GIL for long stretches, and a crashed worker must not take
the others down.

Torch threads are split, not multiplied: each worker gets ``min(spec threads, cores // N)``
(at least one), set before torch starts through ``--threads`` and ``OMP_NUM_THREADS``. More
threads than cores slow evaluation down by an order of magnitude (OpenMP threads spin-wait for
each other; ``bench/RESULTS_distributed.md``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

WORKER_ENV = "MERGESEARCH_WORKER"  # set in each child: its index, for its one-line report
STORAGE_ENV = "MERGESEARCH_STORAGE"  # the storage URL, kept off command lines (ps shows those)


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(spec_threads: int, workers: int) -> int:
    return max(1, min(spec_threads, cores() // workers))


@dataclass
class Worker:
    index: int
    process: subprocess.Popen
    pump: threading.Thread

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{self.process.pid}"


def start_workers(
    argv: Sequence[str],
    workers: int,
    threads: int,
    *,
    program: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> list[Worker]:
    """Start ``workers`` copies of ``mergesearch search ARGV --threads T`` with ``env`` added to
    their environment (``program`` replaces the command line, for tests of this module)."""
    started = []
    for index in range(workers):
        child_env = {
            **os.environ,
            **(env or {}),
            WORKER_ENV: str(index),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
        }
        command = list(program) or [
            *(sys.executable, "-m", "mergesearch", "search"),
            *argv,
            *("--threads", str(threads)),
        ]
        process = subprocess.Popen(
            command,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the parent only, which forwards it once
        )
        pump = threading.Thread(target=_prefix, args=(process.stdout, f"[w{index}] "), daemon=True)
        pump.start()
        started.append(Worker(index, process, pump))
    return started


def wait_for(workers: list[Worker]) -> list[int]:
    """Wait for every worker, forwarding SIGINT and SIGTERM to those still running."""

    def forward(signum: int, _frame: Any) -> None:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [worker.process.wait() for worker in workers]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for worker in workers:
        worker.pump.join(timeout=5)
    return codes


def exit_code(codes: Sequence[int]) -> int:
    """0 when every worker succeeded; 130 when they were interrupted; else the first failure's
    code (1 for a crash by signal)."""
    if all(code == 0 for code in codes):
        return 0
    if all(code in (0, 130) for code in codes):
        return 130
    bad = [code for code in codes if code not in (0, 130)]
    return bad[0] if bad[0] > 0 else 1


def _prefix(stream: IO[str], prefix: str) -> None:
    for line in stream:
        sys.stderr.write(prefix + line)
        sys.stderr.flush()
    stream.close()
