"""The probe evaluator for worker processes (``tests.search.distributed.dist_probe:score``).

Worker processes cannot be steered through module globals as ``probe`` is, so this one reads
its evaluator ``options`` and one environment variable:

- ``delay``: seconds each call sleeps, so that trials overlap between workers;
- ``barrier_dir``/``barrier_n``: the first call of each process waits until ``barrier_n``
  processes have arrived, so that every worker takes part (none finishes the study alone);
- ``HOLD_ENV`` = K: the K-th call (0-based) of this process writes ``held-<pid>`` into
  ``barrier_dir`` and then hangs, in the middle of its trial, until the test kills it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mergesearch.evaluators import EvalResult
from tests.helpers import probe

HOLD_ENV = "DIST_PROBE_HOLD_CALL"
_calls = 0


def score(
    model: Any,
    tokenizer: Any,
    *,
    limit: int | None = None,
    per_item: bool = False,
    delay: float = 0.0,
    barrier_dir: str | None = None,
    barrier_n: int = 0,
) -> EvalResult:
    global _calls
    call, _calls = _calls, _calls + 1
    if barrier_dir and barrier_n and call == 0:
        _arrive(Path(barrier_dir), barrier_n)
    if os.environ.get(HOLD_ENV) == str(call):
        assert barrier_dir, "holding needs barrier_dir, where the test looks for held-<pid>"
        Path(barrier_dir).mkdir(parents=True, exist_ok=True)
        (Path(barrier_dir) / f"held-{os.getpid()}").write_text("")
        while True:
            time.sleep(60)
    time.sleep(delay)
    return probe.score(model, tokenizer, limit=limit, per_item=per_item)


def _arrive(folder: Path, n: int, timeout: float = 120.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"arrived-{os.getpid()}").write_text("")
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("arrived-*"))) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"barrier: {n} workers never arrived")
        time.sleep(0.05)
