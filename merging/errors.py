"""Errors mergesearch reports to a user, and the "did you mean" hint their messages share.

Every error a user should see as one line, without a traceback, is a ``MergeError``; which kind
it is decides the exit code, by type:

- ``ConfigError``: bad input (a config, spec, checkpoint, path, flag, evaluator option). The
  user must change something: exit 2. Every package's input errors subclass it.
- any other ``MergeError`` (``MergeRuntimeError`` and its subclasses): a failure while running
  that the input did not cause: exit 1.

Anything else is a bug and keeps its traceback. Messages are one line naming the file, the key
or the value, and the fix. This module is the lowest layer: ``merging``, ``evaluators`` and
``search`` all import it, and it imports nothing of theirs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MergeError(Exception):
    """Base class of every error mergesearch reports to a user without a traceback."""


class ConfigError(MergeError, ValueError):
    """Bad input: config, checkpoint, path or argument. The CLI exits with code 2."""


class MergeRuntimeError(MergeError, RuntimeError):
    """A failure while merging that is not the user's input. The CLI exits with code 1."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when one of ``options`` is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
