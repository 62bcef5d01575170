"""The Evaluator seam: anything that turns a live model into named scores.

The search calls evaluators on one model object whose weights change between trials, so an
evaluator must never cache anything derived from the weights (only task data, prompts and
requests). Adding an evaluator is adding one module that calls ``register``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Direction = Literal["maximize", "minimize"]


@dataclass
class EvalResult:
    """Scores of one evaluation.

    ``metrics`` maps lm-eval style names (``"rev/exact_match,strip"``, ``"perplexity"``) to
    values. ``items`` maps the same names to per-item scores as ``(doc_id, score)`` pairs when
    the caller asked for them (pruning and paired comparisons need them), else stays empty.
    ``requests`` counts what the model was asked (lm-eval generation and loglikelihood
    requests, perplexity windows, a callable's own count): at real model sizes evaluation is
    most of a search's cost, so the search budgets and reports it beside trials.
    """

    metrics: dict[str, float]
    items: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    seconds: float = 0.0
    requests: int = 0


class Evaluator(Protocol):
    """Scores a live ``transformers`` model; never writes it to disk."""

    name: str

    def evaluate(
        self,
        model: Any,
        tokenizer: Any,
        *,
        limit: int | None = None,
        seed: int = 0,
        samples: Sequence[int] | None = None,
        per_item: bool = False,
    ) -> EvalResult: ...

    def direction(self, metric: str) -> Direction:
        """Whether a higher or a lower value of ``metric`` is better."""
        ...

    # Optional: ``metric_names() -> {task: {metric, ...}}``, the metrics each task produces,
    # known before any call (lm-eval reads them from the task configs). A search then checks
    # its objectives' metric names before the study exists; without it, at the first trial.


@dataclass(frozen=True)
class Selection:
    """``Evaluator.evaluate``'s keywords as one value, what ``TimedEvaluator._score`` takes:
    ``limit`` (the first items) or ``samples`` (item indices), the call's ``seed``, and
    whether to return ``per_item`` scores."""

    limit: int | None = None
    seed: int = 0
    samples: Sequence[int] | None = None
    per_item: bool = False


class TimedEvaluator:
    """Base of the built-in evaluators: ``evaluate`` takes ``Evaluator``'s keywords in one
    place for all of them, and measures each call's ``seconds`` the same way. A subclass
    writes ``_score`` and ``direction``."""

    def evaluate(self, model: Any, tokenizer: Any, **keywords: Any) -> EvalResult:
        """``Evaluator.evaluate``; ``keywords`` are ``Selection``'s fields."""
        return self._timed(model, tokenizer, Selection(**keywords))

    def _timed(self, model: Any, tokenizer: Any, selection: Selection, **extra: Any) -> EvalResult:
        """``_score``, with the result's ``seconds`` set to the call's wall time; ``extra``
        keywords of a subclass's own ``evaluate`` go through to its ``_score``."""
        started = time.perf_counter()
        result = self._score(model, tokenizer, selection, **extra)
        result.seconds = time.perf_counter() - started
        return result

    def _score(self, model: Any, tokenizer: Any, selection: Selection) -> EvalResult:
        raise NotImplementedError


EvaluatorFactory = Callable[..., Evaluator]
EVALUATORS: dict[str, EvaluatorFactory] = {}


def register(name: str) -> Callable[[EvaluatorFactory], EvaluatorFactory]:
    def wrap(factory: EvaluatorFactory) -> EvaluatorFactory:
        if name in EVALUATORS:
            raise ValueError(f"evaluator {name!r} registered twice")
        EVALUATORS[name] = factory
        return factory

    return wrap
