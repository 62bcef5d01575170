"""What the command line prints, and where printing stops: no password, no broken-pipe trace.

Every line a command prints passes through here once more on its way out: error lines and log
records have URL passwords hidden (``distributed.urls``), whatever library wrote them. And a
reader that stops early (``mergesearch status ... | head``) ends the command quietly, as it
ends ``cat`` or ``git log``: exit 141 (killed by SIGPIPE, in shell terms), no traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from mergesearch.search.distributed.urls import hide_passwords

__all__ = ["BROKEN_PIPE_EXIT", "closed_output", "hidden_passwords", "hide_passwords"]

BROKEN_PIPE_EXIT = 128 + 13  # SIGPIPE, what a shell reports for `cmd | head`


def hidden_passwords(record: logging.LogRecord) -> bool:
    """Logging filter: the record's message with every URL password hidden."""
    message = record.getMessage()
    shown = hide_passwords(message)
    if shown != message:
        record.msg, record.args = shown, None
    return True


def closed_output() -> int:
    """The reader of stdout went away: send the rest (and Python's final flush) nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (a test's capture)
        pass
    finally:
        os.close(devnull)
    return BROKEN_PIPE_EXIT
