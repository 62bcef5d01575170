"""Fault injection for a child process: a disk that fills up.

Imported at start-up when this folder is on ``PYTHONPATH``. Two switches, both off by default:

- ``MERGESEARCH_TEST_ENOSPC`` = ``PREFIX:BYTES``: files opened for writing under ``PREFIX``
  raise ``OSError(ENOSPC)`` once more than ``BYTES`` have been written to them in total;
- ``MERGESEARCH_TEST_DB_FULL`` = ``FLAG``: SQLite refuses every write with ``SQLITE_FULL``
  while the file ``FLAG`` exists (below).

A tiny tmpfs would be the real thing, but mounting one needs privileges tests do not have.
"""

from __future__ import annotations

import builtins
import errno
import io
import os

_SETTING = os.environ.get("MERGESEARCH_TEST_ENOSPC")


class _Full:
    """A writable file whose ``write`` fails once the shared byte budget is spent."""

    budget = 0

    def __init__(self, raw):
        self._raw = raw

    def write(self, data):
        size = memoryview(data).nbytes if not isinstance(data, str) else len(data.encode())
        if size > _Full.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _Full.budget -= size
        return self._raw.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.close()

    def __getattr__(self, name):
        return getattr(self._raw, name)


if _SETTING:
    _prefix, _bytes = _SETTING.rsplit(":", 1)
    _Full.budget = int(_bytes)
    _open = io.open

    def _guarded_open(file, mode="r", *args, **kwargs):
        handle = _open(file, mode, *args, **kwargs)
        writing = any(m in mode for m in "wax+")
        ours = isinstance(file, str | os.PathLike) and os.path.abspath(file).startswith(_prefix)
        return _Full(handle) if writing and ours else handle

    io.open = builtins.open = _guarded_open


# ``MERGESEARCH_TEST_DB_FULL`` = FLAG: while the file FLAG exists, every SQLite statement that
# writes fails as SQLite fails on a full disk (``SQLITE_FULL``: "database or disk is full");
# reads keep working. The test creates FLAG in the middle of a search: the disk fills up.
_DB_FULL = os.environ.get("MERGESEARCH_TEST_DB_FULL")

if _DB_FULL:
    import sqlite3
    import sqlite3.dbapi2

    _WRITES = ("insert", "update", "delete", "replace", "create", "drop", "alter")

    def _refuse_when_full(sql):
        if os.path.exists(_DB_FULL) and str(sql).lstrip().lower().startswith(_WRITES):
            raise sqlite3.OperationalError("database or disk is full")

    class _FullCursor(sqlite3.Cursor):
        def execute(self, sql, *args):
            _refuse_when_full(sql)
            return super().execute(sql, *args)

        def executemany(self, sql, *args):
            _refuse_when_full(sql)
            return super().executemany(sql, *args)

    class _FullConnection(sqlite3.Connection):
        def cursor(self, factory=_FullCursor):
            return super().cursor(factory)

        def execute(self, sql, *args):
            _refuse_when_full(sql)
            return super().execute(sql, *args)

    _sqlite_connect = sqlite3.connect

    def _connect(*args, **kwargs):
        kwargs.setdefault("factory", _FullConnection)
        return _sqlite_connect(*args, **kwargs)

    sqlite3.connect = sqlite3.dbapi2.connect = _connect
