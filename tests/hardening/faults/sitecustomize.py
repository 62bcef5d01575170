"""Fault injection for a child process: a disk that fills up.

Imported at start-up when this folder is on ``PYTHONPATH``. Two switches, both off by default:

- ``MERGESEARCH_TEST_ENOSPC`` = ``PREFIX:BYTES``: files opened for writing under ``PREFIX``
  raise ``OSError(ENOSPC)`` once more than ``BYTES`` have been written to them in total,
  through ``open`` or through ``os.open`` and ``os.write`` (the direct output files);
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

    _os_open, _os_write, _os_close = os.open, os.write, os.close
    _guarded_fds: set[int] = set()

    def _guarded_os_open(path, flags, *args, **kwargs):
        fd = _os_open(path, flags, *args, **kwargs)
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if writing and os.path.abspath(path).startswith(_prefix):
            _guarded_fds.add(fd)
        return fd

    def _guarded_os_write(fd, data):
        if fd in _guarded_fds:
            size = memoryview(data).nbytes
            if size > _Full.budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            _Full.budget -= size
        return _os_write(fd, data)

    def _guarded_os_close(fd):
        _guarded_fds.discard(fd)
        return _os_close(fd)

    os.open, os.write, os.close = _guarded_os_open, _guarded_os_write, _guarded_os_close


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
