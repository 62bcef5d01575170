"""Errors evaluators raise for users, on the error kinds of ``merging.errors``.

An ``EvaluatorError`` is bad input (a ``ConfigError``: exit 2): an unknown evaluator, task or
metric, a missing data file, a bad option. An ``EvaluatorRuntimeError`` is a failure while
scoring (a ``MergeRuntimeError``: exit 1). Messages are one line and name the evaluator or
task they are about.
"""

from __future__ import annotations

from mergesearch.merging.errors import ConfigError, MergeRuntimeError


class EvaluatorError(ConfigError):
    """Bad input to an evaluator. The CLI exits with code 2."""


class EvaluatorRuntimeError(MergeRuntimeError):
    """A failure while evaluating that is not the user's input. The CLI exits with code 1."""
