"""Where studies live: one ``open_storage(url)`` for every backend.

A storage is named by a URL string, so that any number of processes on any number of machines
join the same study by passing the same string:

- ``sqlite:///results/<study>/study.db`` (the default), ``postgresql+psycopg2://...``,
  ``mysql+pymysql://...``: Optuna's RDB storage (tables are created on open, which also avoids
  a race of two workers creating them on an empty PostgreSQL database);
- ``journal:PATH``: an append-only journal file, fine for several processes on one machine;
- ``memory:``: in-process only (tests).

``resolve_target`` turns what a user types after ``mergesearch status`` (a results folder, a
``study.db`` file, a journal file or a URL) into such a URL.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from search.errors import SpecError

RESULTS_DIR = Path("results")
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


def default_storage_url(study_name: str, results_dir: Path | str = RESULTS_DIR) -> str:
    return f"sqlite:///{Path(results_dir) / study_name / 'study.db'}"


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def open_storage(url: str) -> BaseStorage:
    """Open (and create where needed) the storage a URL names; ``SpecError`` if it cannot."""
    scheme = _scheme(url)
    if url in ("memory", "memory:"):
        return InMemoryStorage()
    if scheme == "journal":
        path = Path(url.split(":", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if scheme not in RDB_SCHEMES:
        raise SpecError(
            f"storage {url!r}: unknown kind {scheme!r}; use sqlite:///PATH, "
            "postgresql+psycopg2://USER:PASS@HOST/DB, mysql+pymysql://..., journal:PATH or memory:"
        )
    engine_kwargs = {}
    if scheme == "sqlite":
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}  # several local workers wait, not fail
    try:
        storage = RDBStorage(url, engine_kwargs=engine_kwargs)
        if scheme == "sqlite":
            _fast_sqlite(storage)
        return storage
    except ImportError as err:
        raise SpecError(f"storage {url!r}: missing database driver ({err})") from None
    except Exception as err:  # SQLAlchemy raises many kinds; all mean "cannot use this URL"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"storage {url!r}: cannot open ({first})") from None


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
            raise SpecError(f"{url}: no study named {name!r} (studies: {listed})")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise SpecError(f"{url}: holds no study yet")
    raise SpecError(f"{url}: holds several studies ({', '.join(names)}); pass --study-name")
