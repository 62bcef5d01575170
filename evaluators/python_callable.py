"""A user's own scoring function, named ``package.module:function``.

The function receives the live model and tokenizer, and of ``limit``, ``seed``, ``samples``
and ``per_item`` the keywords it declares, plus the evaluator's ``options``. It returns either
a mapping of metric names to numbers or an ``EvalResult`` (to give per-item scores too).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from mergesearch.evaluators import runtime
from mergesearch.evaluators.base import Direction, EvalResult, Selection, TimedEvaluator, register
from mergesearch.evaluators.errors import EvaluatorError

_CALL_KEYWORDS = tuple(f.name for f in fields(Selection))  # limit, seed, samples, per_item


@register("python")
class PythonEvaluator(TimedEvaluator):
    """Options: ``callable`` (``"pkg.mod:fn"``), ``directions`` (metric -> ``"maximize"`` or
    ``"minimize"``, for metrics where higher is not better), ``options`` (extra keywords for
    the function), ``threads``."""

    name = "python"

    def __init__(
        self,
        callable: str,
        *,
        directions: Mapping[str, Direction] | None = None,
        options: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        runtime.configure(threads)
        self.target = callable
        self.fn = _import_callable(callable)
        self.directions = dict(directions or {})
        for metric, direction in self.directions.items():
            if direction not in ("maximize", "minimize"):
                raise EvaluatorError(
                    f"python evaluator {callable!r}: direction of {metric!r} must be "
                    f"'maximize' or 'minimize', got {direction!r}"
                )
        self.options = dict(options or {})
        accepted = inspect.signature(self.fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        self._passed = [k for k in _CALL_KEYWORDS if takes_any or k in accepted]

    def _score(self, model: Any, tokenizer: Any, selection: Selection) -> EvalResult:
        given = {k: getattr(selection, k) for k in self._passed}
        out = self.fn(model, tokenizer, **given, **self.options)
        if isinstance(out, EvalResult):
            result = out
        elif isinstance(out, Mapping):
            try:
                result = EvalResult(metrics={str(k): float(v) for k, v in out.items()})
            except (TypeError, ValueError) as err:
                raise EvaluatorError(
                    f"python evaluator {self.target!r} returned a non-numeric score: {err}"
                ) from None
        else:
            raise EvaluatorError(
                f"python evaluator {self.target!r} returned {type(out).__name__}, "
                "expected a mapping of metric names to numbers or an EvalResult"
            )
        return result

    def direction(self, metric: str) -> Direction:
        return self.directions.get(metric, "maximize")


def _import_callable(target: str) -> Callable[..., Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise EvaluatorError(
            f"python evaluator: callable must look like 'package.module:function', got {target!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EvaluatorError(
            f"python evaluator {target!r}: cannot import {module_name}: {err}"
        ) from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise EvaluatorError(f"python evaluator {target!r}: {module_name} has no {attr!r}")
    if not callable(fn):
        raise EvaluatorError(f"python evaluator {target!r}: {attr!r} is not callable")
    return fn
