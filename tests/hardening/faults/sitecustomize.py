"""Fault injection for a child process: a disk that fills up under one folder.

Imported at start-up when this folder is on ``PYTHONPATH`` and ``MERGESEARCH_TEST_ENOSPC`` is
``PREFIX:BYTES``: files opened for writing under ``PREFIX`` raise ``OSError(ENOSPC)`` once more
than ``BYTES`` have been written to them in total, as a full disk does. Nothing else changes.
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
