"""Where studies live: one ``open_storage(url)`` for every backend.

A storage is named by a URL string, so that any number of processes on any number of machines
join the same study by passing the same string:

- ``sqlite:///results/<study>/study.db`` (the default), ``postgresql+psycopg2://...``,
  ``mysql+pymysql://...``: Optuna's RDB storage. Its tables are created on open, under a lock
  (``search.locks``): several workers starting at once on an empty PostgreSQL database would
  otherwise collide in ``CREATE TABLE`` and all but one crash. With ``heartbeat_interval`` set,
  a running trial records a heartbeat; one silent for ``grace_period`` seconds (its worker
  died) is failed and re-queued once with the same parameters;
- ``journal:PATH``: an append-only journal file, fine for several processes on one machine
  (no heartbeats: a killed worker's trial stays "running");
- ``memory:``: in-process only (tests).

``resolve_target`` turns what a user types after ``mergesearch status`` (a results folder, a
``study.db`` file, a journal file or a URL) into such a URL.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import (
    BaseStorage,
    InMemoryStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend

from mergesearch.search.distributed.locks import Lock, file_of, schema_lock, scheme, study_lock
from mergesearch.search.distributed.urls import hide_password, scrub
from mergesearch.search.errors import SpecError

log = logging.getLogger(__name__)

RESULTS_DIR = Path("results")
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


def default_storage_url(study_name: str, results_dir: Path | str = RESULTS_DIR) -> str:
    return f"sqlite:///{Path(results_dir) / study_name / 'study.db'}"


def open_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> BaseStorage:
    """Open (and create where needed) the storage a URL names; ``SpecError`` if it cannot.

    ``heartbeat_interval``/``grace_period`` (seconds) turn on dead-worker detection for RDB
    storages; other storages ignore them."""
    kind = scheme(url)
    if url in ("memory", "memory:"):
        return InMemoryStorage()
    if kind == "journal":
        path = Path(url.split(":", 1)[1])
        _make_folder(path.parent)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:
            raise SpecError(f"storage {url!r}: cannot open ({err.strerror or err})") from None
    if kind not in RDB_SCHEMES:
        raise SpecError(
            f"storage {hide_password(url)!r}: unknown kind {kind!r}; use sqlite:///PATH, "
            "postgresql+psycopg2://USER:PASS@HOST/DB, mysql+pymysql://..., journal:PATH or memory:"
        )
    engine_kwargs = {}
    if kind == "sqlite":
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            _make_folder(Path(path).parent)
        engine_kwargs["connect_args"] = {"timeout": 60}  # several local workers wait, not fail
    else:
        engine_kwargs["pool_pre_ping"] = True  # a long trial outlives idle server connections
    heartbeat = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": retry_once(),
        }
    try:
        storage = _create_tables(url, engine_kwargs, heartbeat)
        if kind == "sqlite":
            _fast_sqlite(storage)
        return storage
    except ImportError as err:
        raise SpecError(
            f"storage {hide_password(url)!r}: missing database driver ({err})"
        ) from None
    except Exception as err:  # SQLAlchemy raises many kinds; all mean "cannot use this URL"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(
            f"storage {hide_password(url)!r}: cannot open ({scrub(first, url)})"
        ) from None


# the tables every Optuna RDB storage holds: without them a database holds no study
OPTUNA_TABLES = ("studies", "trials", "version_info", "alembic_version")


def open_existing(url: str) -> BaseStorage:
    """The storage of studies that exist, for commands that only read (status, report, export,
    dashboard): a missing or empty file, or a database without Optuna's tables, is a
    ``SpecError``, never a new database; no file, table or lock file is created."""
    shown = hide_password(url)
    kind = scheme(url)
    if url in ("memory", "memory:"):
        raise SpecError(f"{url}: a memory: storage lives inside one process; give a file or URL")
    path = file_of(url)
    if kind in ("sqlite", "journal"):
        if path is None or not path.is_file():
            raise SpecError(
                f"{shown}: no such study file; give the results folder or storage of a search"
            )
        if path.stat().st_size == 0:
            raise SpecError(f"{path}: empty file, not a study; give the storage of a search")
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(path)))
    if kind not in RDB_SCHEMES:
        return open_storage(url)  # the one place that words an unknown kind
    engine_kwargs = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {}
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        if not set(OPTUNA_TABLES) <= tables:
            raise SpecError(
                f"{shown}: holds no study (no Optuna tables); is this the right storage?"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except SpecError:
        raise
    except ImportError as err:
        raise SpecError(f"storage {shown!r}: missing database driver ({err})") from None
    except Exception as err:  # SQLAlchemy raises many kinds; all mean "cannot use this URL"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"storage {shown!r}: cannot open ({scrub(first, url)})") from None


def _make_folder(folder: Path) -> None:
    """The storage's folder (``results/<study>`` by default), or one line on why not: a
    read-only working directory, a full disk."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError(
            f"{folder.absolute()}: cannot create the study's folder ({err.strerror or err}); "
            "run from a writable folder or pass --storage"
        ) from None


def retry_once() -> RetryHeartbeatStaleTrialCallback:
    """A dead worker's trial runs again once, same parameters; a second death counts as a
    failed trial (a config that kills its worker, say by memory, must not loop forever)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=1)


class WorkerStorage(RDBStorage):
    """Optuna's RDB storage, whose heartbeat survives a write that fails (a full disk, a
    database restarting): Optuna's heartbeat thread would die with a traceback, although the
    worker's next write meets the same failure and reports it in one line."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except sqlalchemy.exc.SQLAlchemyError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            # debug: the failure that matters is reported once, by the worker's next write
            log.debug("heartbeat of trial %d not written (%s)", trial_id, first)


def _create_tables(url: str, engine_kwargs: dict, heartbeat: dict) -> RDBStorage:
    """``RDBStorage(url)`` under the schema lock, retried with backoff on the errors a
    concurrent ``CREATE TABLE`` raises (a client that does not take our lock may still race)."""
    transient = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
    attempts = 6
    for attempt in range(attempts):
        try:
            with schema_lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return WorkerStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except transient:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def lock_for(storage: BaseStorage, url: str, study_name: str) -> Lock:
    """The cross-process lock of one study in this storage (see ``search.locks``)."""
    engine = storage.engine if isinstance(storage, RDBStorage) else None
    return study_lock(url, study_name, engine)


def _fast_sqlite(storage: RDBStorage) -> None:
    """WAL journal, fsync at checkpoints only: a commit per trial attribute then costs
    microseconds instead of a disk flush, and readers (status, dashboard) do not block
    writers. A power cut may lose the last trials, never corrupt the file."""

    def pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # pooled connections were opened before the hook


def resolve_target(target: str) -> str:
    """A storage URL from a URL, a results folder, a ``.db`` file or a journal file."""
    if "://" in target or target.startswith(("journal:", "memory")):
        return target
    path = Path(target)
    if path.is_dir():
        for name in ("study.db", "journal.log"):
            if (path / name).is_file():
                return _url_for_file(path / name)
        raise SpecError(f"{target}: no study.db or journal.log in this folder")
    if path.is_file():
        return _url_for_file(path)
    raise SpecError(f"{target}: no such results folder, study file or storage URL")


def _url_for_file(path: Path) -> str:
    if path.suffix in JOURNAL_SUFFIXES:
        return f"journal:{path}"
    return f"sqlite:///{path}"


def pick_study_name(storage: BaseStorage, url: str, name: str | None) -> str:
    """``name`` if given, else the only study in the storage; ``SpecError`` when ambiguous."""
    names = [
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    ]
    if name is not None:
        if name not in names:
            listed = ", ".join(names) or "none"
            raise SpecError(f"{hide_password(url)}: no study named {name!r} (studies: {listed})")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise SpecError(f"{hide_password(url)}: holds no study yet")
    raise SpecError(
        f"{hide_password(url)}: holds several studies ({', '.join(names)}); pass --study-name"
    )
