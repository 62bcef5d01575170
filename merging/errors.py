"""Errors the merge engine raises.

Two kinds, because the CLI maps them to different exit codes: a ``ConfigError`` is bad input
(exit 2: the user must change a file, a path or a flag), a ``MergeRuntimeError`` is a failure
while running (exit 1). Messages are one line that names the file/key/value and the fix.
"""

from __future__ import annotations


class MergeError(Exception):
    """Base class of every error mergesearch reports to a user without a traceback."""

    exit_code = 1


class ConfigError(MergeError, ValueError):
    """Bad input: config, checkpoint, path or argument. The CLI exits with code 2."""

    exit_code = 2


class MergeRuntimeError(MergeError, RuntimeError):
    """A failure while merging that is not the user's input. The CLI exits with code 1."""

    exit_code = 1
