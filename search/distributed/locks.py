"""One cross-process lock per study, named by the storage URL: ``study_lock(url, name)``.

Workers share nothing but the storage, so the few steps that must not interleave (creating
Optuna's tables in an empty database, creating a study and enqueueing its baselines, handing out
the last trials of the budget, scoring held-out splits once) take a lock that lives where the
storage lives:

- PostgreSQL: a session advisory lock (``pg_advisory_lock``), so workers on any machine
  serialise; the server drops it if a worker dies holding it;
- MySQL/MariaDB: ``GET_LOCK``, the same idea;
- SQLite and journal files: ``flock`` on a ``.lock`` file next to the database (one machine);
- ``memory:``: a thread lock (one process).

Every lock is re-entrant within a process (a depth counter): a holder may call code that
takes it again. Locks on other RDB servers (Oracle, SQL Server) are no-ops; say so in the docs.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.pool import NullPool

SCHEMA_LOCK = "schema"


def scheme(url: str) -> str:
    """``postgresql`` for ``postgresql+psycopg2://...``, ``journal`` for ``journal:PATH``."""
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def lock_key(name: str) -> int:
    """A signed 64-bit key (PostgreSQL's advisory-lock space) for a lock name."""
    digest = hashlib.sha256(f"mergesearch:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Lock:
    """Counts nested ``with`` blocks; subclasses acquire on the first and release on the last.
    ``reliable``: whether holders really exclude each other (not so for ``NoLock``)."""

    reliable = True

    def __init__(self) -> None:
        self._depth = 0

    def __enter__(self) -> Lock:
        if self._depth == 0:
            self._acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._release()

    def _acquire(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


# dialect -> (lock, unlock) statements of a session-level advisory lock
ADVISORY_SQL = {
    "postgresql": ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
    "mysql": ("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)"),
}


class ServerLock(Lock):
    """An advisory lock held by one dedicated connection (PostgreSQL or MySQL)."""

    def __init__(self, engine: sqlalchemy.engine.Engine, name: str) -> None:
        super().__init__()
        self.engine = engine
        kind = engine.dialect.name
        self.lock_sql, self.unlock_sql = ADVISORY_SQL[kind]
        # MySQL lock names are strings of at most 64 characters.
        self.key: Any = lock_key(name) if kind == "postgresql" else f"ms-{lock_key(name):x}"
        self._conn: sqlalchemy.engine.Connection | None = None

    def _acquire(self) -> None:
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(sqlalchemy.text(self.lock_sql), {"key": self.key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(sqlalchemy.text(self.unlock_sql), {"key": self.key})
        finally:
            conn.close()  # closing the session would release the lock anyway


class FileLock(Lock):
    """``flock`` on a file: every process on this machine that opens the same path serialises."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file: Any = None

    def _acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 (held until _release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        self._file = handle

    def _release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing drops the flock


class ThreadLock(Lock):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def _acquire(self) -> None:
        self._lock.acquire()

    def _release(self) -> None:
        self._lock.release()


class NoLock(Lock):
    reliable = False

    def _acquire(self) -> None:
        pass

    def _release(self) -> None:
        pass


_MEMORY_LOCKS: dict[str, ThreadLock] = {}


def study_lock(url: str, name: str, engine: sqlalchemy.engine.Engine | None = None) -> Lock:
    """The lock called ``name`` in the storage ``url``; ``engine`` reuses a storage's pool."""
    kind = scheme(url)
    if kind in ADVISORY_SQL:
        return ServerLock(engine or lock_engine(url), name)
    path = file_of(url)
    if path is not None:
        return FileLock(path.with_name(f"{path.name}.study-{_safe(name)}.lock"))
    if url in ("memory", "memory:"):
        return _MEMORY_LOCKS.setdefault(name, ThreadLock())
    return NoLock()


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Held while Optuna creates its tables, so that N workers on an empty database all start.

    Its connection comes from a throw-away engine: the storage does not exist yet."""
    if scheme(url) not in ADVISORY_SQL:
        path = file_of(url) if scheme(url) == "sqlite" else None  # a journal locks itself
        lock: Lock = FileLock(path.with_name(f"{path.name}.schema.lock")) if path else NoLock()
        with lock:
            yield
        return
    engine = lock_engine(url)
    try:
        with ServerLock(engine, SCHEMA_LOCK):
            yield
    finally:
        engine.dispose()


def lock_engine(url: str) -> sqlalchemy.engine.Engine:
    return sqlalchemy.create_engine(url, poolclass=NullPool)


def file_of(url: str) -> Path | None:
    """The file behind a ``sqlite:///PATH`` or ``journal:PATH`` URL (``None`` for the rest)."""
    kind = scheme(url)
    if kind == "journal":
        return Path(url.split(":", 1)[1])
    if kind == "sqlite" and ":///" in url:
        path = url.split(":///", 1)[1].split("?", 1)[0]
        if path and path != ":memory:":
            return Path(path)
    return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
