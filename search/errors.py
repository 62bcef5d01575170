"""Errors of the search layer, on the error kinds of ``merging.errors``.

``SpecError`` is bad input (a search spec, a storage URL, a flag): exit 2, one line that names
the file, the key and what is allowed. ``SearchRuntimeError`` is a failure while searching that
the user did not cause by their input: exit 1. A failing *trial* is neither: it is recorded in
the study with its reason and the search goes on (see ``search.optimize.objective``).
"""

from __future__ import annotations

from mergesearch.merging.errors import ConfigError, MergeRuntimeError


class SpecError(ConfigError):
    """A search spec, storage URL or command-line value that cannot be used (exit 2)."""


class SearchRuntimeError(MergeRuntimeError):
    """The search itself cannot go on (exit 1)."""


class TrialFailed(Exception):
    """Raised inside the objective: Optuna records the trial as FAIL and the study goes on."""
