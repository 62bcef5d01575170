"""Errors of the search layer, on the exit-code scheme of ``merging.errors``.

``SpecError`` is bad input (a search spec, a storage URL, a flag): exit 2, one line that names
the file, the key and what is allowed. ``SearchRuntimeError`` is a failure while searching that
the user did not cause by their input: exit 1. A failing *trial* is neither: it is recorded in
the study with its reason and the search goes on (see ``search.objective``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from mergesearch.merging.errors import ConfigError, MergeError


class SpecError(ConfigError):
    """A search spec, storage URL or command-line value that cannot be used (exit 2)."""


class SearchRuntimeError(MergeError, RuntimeError):
    """The search itself cannot go on (exit 1)."""

    exit_code = 1


class TrialFailed(Exception):
    """Raised inside the objective: Optuna records the trial as FAIL and the study goes on."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close option exists, else an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
