"""Evaluators: turn a live model into named scores. ``get(name, **options)`` builds one.

Each evaluator is one module that registers itself by name; importing it below is all the
wiring there is.
"""

from __future__ import annotations

import inspect
from typing import Any

from mergesearch.evaluators import lm_harness, perplexity, python_callable  # noqa: F401  (they register)
from mergesearch.evaluators.base import EVALUATORS, Direction, EvalResult, Evaluator, register
from mergesearch.evaluators.errors import EvaluatorError, EvaluatorRuntimeError
from mergesearch.merging.errors import did_you_mean

__all__ = [
    "EVALUATORS",
    "Direction",
    "EvalResult",
    "Evaluator",
    "EvaluatorError",
    "EvaluatorRuntimeError",
    "get",
    "register",
]


def get(name: str, **options: Any) -> Evaluator:
    """The evaluator registered as ``name``, built with ``options``.

    Raises ``EvaluatorError`` (one line) for an unknown name or options it does not take.
    """
    factory = EVALUATORS.get(name)
    if factory is None:
        raise EvaluatorError(
            f"unknown evaluator {name!r}{did_you_mean(name, EVALUATORS)}; "
            f"known: {', '.join(sorted(EVALUATORS))}"
        )
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        raise EvaluatorError(f"evaluator {name!r}: {err}") from None
    return factory(**options)
