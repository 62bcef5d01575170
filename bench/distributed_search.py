"""How does a search scale with local workers? One fixed 24-trial demo study, 1, 2, 3 workers.

Runs ``mergesearch search configs/searches/demo.yaml --n-trials 24 --workers N`` (the real
command: a parent and N worker processes) on demo family seed 0, each N on a fresh study, and
times it end to end (start-up, trials, held-out scoring). The storage is PostgreSQL when
``--postgres URL`` (or ``$MERGESEARCH_TEST_POSTGRES_URL``) is given, one fresh database per run,
else one SQLite file per run. Prints a table and writes ``bench/RESULTS_distributed.md``.

    python bench/distributed_search.py                  # 1, 2, 3 workers
    python bench/distributed_search.py --workers 1 2 --trials 12

The family must be built already (``mergesearch demo build``; about 7 minutes): this script
only reads it, from ``$MERGESEARCH_DEMO_DIR`` or ``results/demo-models``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mergesearch.search import attrs as A  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def fresh_postgres(url: str) -> tuple[str, Callable[[], None]]:
    """A new empty database next to ``url``'s and a function that drops it."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"ms_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return sqlalchemy.engine.make_url(url).set(database=name).render_as_string(False), drop


def run_once(spec: Path, name: str, workers: int, trials: int, storage: str) -> dict:
    load_before = load_avg()
    started = time.perf_counter()
    run = subprocess.run(
        [
            *(sys.executable, "-m", "mergesearch", "search", str(spec), "--no-progress"),
            *("--n-trials", str(trials), "--workers", str(workers), "--storage", storage),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(
            f"{workers} worker(s) failed (exit {run.returncode}):\n{run.stderr[-3000:]}"
        )
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    per_worker = re.findall(r"worker \d+ \(.*?\): ok, (\d+) trial", run.stdout)
    return {
        "workers": workers,
        "wall": wall,
        "trials_span": (last - first).total_seconds(),
        "per_trial": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
        / len(done),
        "completed": len(done),
        "split": "/".join(per_worker) if per_worker else str(len(done)),
        "best": max(t.values[0] for t in done if A.BASELINE not in t.user_attrs),
        "load": load_before + " -> " + load_avg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--postgres", default=os.environ.get("MERGESEARCH_TEST_POSTGRES_URL"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS_distributed.md")
    args = parser.parse_args()

    from mergesearch.search.cli.demo import demo_spec
    from mergesearch.search.demo.family import DemoRecipe, default_demo_dir, load_demo_family

    root = default_demo_dir() / "seed0"
    family = load_demo_family(root, DemoRecipe(), 0)
    if family is None:
        raise SystemExit(f"no demo family at {root}: run `mergesearch demo build` first")
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    spec = tmp / "demo.yaml"
    data = demo_spec(family, 0)
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    kind = "PostgreSQL 15 (fresh database per run)" if args.postgres else "SQLite (WAL)"
    rows = []
    for workers in args.workers:
        if args.postgres:
            storage, drop = fresh_postgres(args.postgres)
        else:
            storage, drop = f"sqlite:///{tmp / f'w{workers}.db'}", lambda: None
        try:
            rows.append(run_once(spec, data["name"], workers, args.trials, storage))
        finally:
            drop()
        print(f"{workers} worker(s): {rows[-1]['wall']:.1f} s", flush=True)

    base = rows[0]["trials_span"]
    header = (
        f"{'workers':>7} {'wall s':>7} {'trials s':>8} {'speed-up':>8} {'s/trial':>7} "
        f"{'done':>4} {'per worker':>10} {'best':>7}  load (1/5/15 min, before -> after)"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['workers']:>7} {r['wall']:>7.1f} {r['trials_span']:>8.1f} "
            f"{base / r['trials_span']:>7.2f}x {r['per_trial']:>7.2f} {r['completed']:>4} "
            f"{r['split']:>10} {r['best']:>7.4f}  {r['load']}"
        )
    table = "\n".join(lines)
    print(f"\nstorage: {kind}; {os.cpu_count()} cores\n{table}")
    args.out.write_text(report(table, kind, args.trials))
    print(f"\nwrote {args.out}")


def report(table: str, kind: str, trials: int) -> str:
    return f"""# Distributed search: local workers (`bench/distributed_search.py`)

```
python bench/distributed_search.py        # {trials}-trial demo study, 1, 2 and 3 workers
```

The demo search (`configs/searches/demo.yaml`, family seed 0, TPE, lm-eval on the two demo
tasks) with a budget of {trials} trials, run by `mergesearch search --workers N` from an empty
study each time. Storage: {kind}. Machine: {os.cpu_count()} CPU cores, maybe shared with other
busy processes (their load is in the last column); one torch thread per worker.

- *wall s*: the whole command: parent, worker start-up (imports, opening the models), trials,
  held-out scoring of the baselines and the best trial (done once, by the first worker to end).
- *trials s*: first trial start to last trial end, read from the study: the part that workers
  share. *speed-up* is against one worker on that span.
- *s/trial*: mean time of one trial (merge + evaluation) as its worker saw it.
- *per worker*: completed trials of each worker.

```
{table}
```

Why it scales as it does: a trial is CPU-bound (merge and lm-eval on one torch thread), so the
speed-up is bounded by the cores: two workers on two cores can at best halve the trial span,
and a third worker adds no core: its trials take longer each (three processes share two cores)
and the span stays about that of two workers. Start-up (importing torch, transformers and
lm-eval; a few seconds of CPU per process) is paid by every worker at the same time and does
not shrink with more workers, so the wall time gains less than the trial span. On a machine
with more cores, or on several machines, each worker brings its own core(s) and the span
divides by the number of workers until the storage becomes the bottleneck (see
`docs/DISTRIBUTED.md`). The one-worker row runs in one process (no parent). Best values differ
between rows because each run samples different candidates; this measures time, not quality.
"""


if __name__ == "__main__":
    main()
