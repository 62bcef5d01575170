"""Errors evaluators raise for users, with the exit codes the CLI maps them to.

An ``EvaluatorError`` is bad input (exit 2): an unknown evaluator, task or metric, a missing
data file, a bad option. An ``EvaluatorRuntimeError`` is a failure while scoring (exit 1).
Messages are one line and name the evaluator or task they are about.
"""

from __future__ import annotations


class EvaluatorError(ValueError):
    """Bad input to an evaluator. The CLI exits with code 2."""

    exit_code = 2


class EvaluatorRuntimeError(RuntimeError):
    """A failure while evaluating that is not the user's input. The CLI exits with code 1."""

    exit_code = 1
