"""Objectives -> evaluator calls -> objective values, for one split of one live model.

Objectives that share an evaluator, its options and the item selection of a split are scored in
one call (lm-eval then batches their requests together). Evaluators are built once per process:
building one loads task data and prompts, which must not happen per trial.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergesearch import evaluators
from mergesearch.merging.errors import ConfigError, did_you_mean
from mergesearch.search.errors import SpecError
from mergesearch.search.spec.schema import Objective, SearchSpec


@dataclass
class SplitScores:
    """Scores of one split: value per objective, per-item scores, seconds and requests spent."""

    values: dict[str, float]
    items: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    seconds: float = 0.0
    requests: int = 0  # what the evaluators were asked, this call only
    itemwise: set[str] = field(default_factory=set)  # objectives whose value is their items' mean


@dataclass
class _Group:
    evaluator: Any
    objectives: list[Objective]
    limit: int | None
    items: tuple[int, int] | None


class Scorer:
    """Scores the objectives of a spec on a live model; knows their directions."""

    def __init__(self, spec: SearchSpec):
        self.spec = spec
        self.objectives = list(spec.objectives)
        self._groups: dict[str, list[_Group]] = {}
        built: dict[str, Any] = {}
        for split in sorted({s for o in self.objectives for s in o.splits}):
            groups: dict[str, _Group] = {}
            for objective in self.objectives:
                if split not in objective.splits:
                    continue
                sel = objective.splits[split]
                options = {**spec.evaluators.get(objective.evaluator, {}), **objective.options}
                key = json.dumps(
                    [objective.evaluator, options, sel.limit, sel.items],
                    sort_keys=True,
                    default=str,
                )
                if key not in groups:
                    groups[key] = _Group(None, [], sel.limit, sel.items)
                groups[key].objectives.append(objective)
            for key, group in groups.items():
                name, options = json.loads(key)[:2]
                tasks = sorted(
                    {o.splits[split].task for o in group.objectives if o.splits[split].task}
                )
                if tasks and _takes_tasks(name):
                    options = {**options, "tasks": tasks}
                cache_key = json.dumps([name, options], sort_keys=True, default=str)
                if cache_key not in built:
                    built[cache_key] = _build(spec, name, options)
                group.evaluator = built[cache_key]
            self._groups[split] = list(groups.values())
        self._check_metrics()
        self.directions = {o.name: self._direction(o) for o in self.objectives}

    def _check_metrics(self) -> None:
        """Each objective's metric against what its evaluator says it produces, where it can
        say so before scoring (lm-eval knows each task's metrics and filters): a typo is one
        line now, not a failed trial in a study that then exists."""
        for split, groups in self._groups.items():
            for group in groups:
                produced = _produced(group.evaluator)
                for objective in group.objectives:
                    task, _, metric = objective.metric_key(split).rpartition("/")
                    if task not in produced or metric in produced[task]:
                        continue
                    known = sorted(produced[task])
                    raise SpecError(
                        f"{self.spec.source}: objectives.{objective.name}.metric: task "
                        f"{task!r} produces no metric {metric!r}{did_you_mean(metric, known)}; "
                        f"it produces: {', '.join(known) or 'nothing'}"
                    )

    def splits(self) -> list[str]:
        return list(self._groups)

    def _direction(self, objective: Objective) -> str:
        if objective.direction:
            return objective.direction
        group = next(g for g in self._groups["search"] if objective in g.objectives)
        return group.evaluator.direction(objective.metric_key("search"))

    # ------------------------------------------------------------------ combining values

    def study_directions(self) -> list[str]:
        if self.spec.combine == "pareto":
            return [self.directions[o.name] for o in self.objectives]
        kinds = set(self.directions.values())
        return [kinds.pop() if len(kinds) == 1 else "maximize"]

    def combine(self, values: Mapping[str, float]) -> list[float]:
        """The study's value(s): the weighted sum (minimised metrics enter negated when the
        study maximises), or one value per objective for a Pareto search."""
        if self.spec.combine == "pareto":
            return [values[o.name] for o in self.objectives]
        direction = self.study_directions()[0]
        total = 0.0
        for objective in self.objectives:
            sign = 1.0 if self.directions[objective.name] == direction else -1.0
            total += sign * objective.weight * values[objective.name]
        return [total]

    def item_values(self, items: Mapping[str, list[tuple[int, float]]]) -> dict[int, float]:
        """Per-item contributions to the weighted sum, on steps unique across objectives
        (what ``WilcoxonPruner`` compares between trials)."""
        direction = self.study_directions()[0]
        out = {}
        for index, objective in enumerate(self.objectives):
            sign = 1.0 if self.directions[objective.name] == direction else -1.0
            scale = sign * objective.weight * len(self.objectives)
            for doc_id, score in items.get(objective.name, []):
                out[index * 10_000_000 + int(doc_id)] = scale * float(score)
        return out

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        model: Any,
        tokenizer: Any,
        split: str,
        *,
        stage: int | None = None,
        per_item: bool = False,
        after: SplitScores | None = None,
    ) -> SplitScores:
        """Score every objective of ``split``; ``stage`` caps the items per task (staged
        evaluation: a cheap first look, then more).

        ``after`` is the previous stage's result: where its metric is the mean of its items
        (exact match, accuracy), only the items it lacks are evaluated and the means are taken
        over both; elsewhere (perplexity, a callable) the stage is scored whole again.
        """
        out = SplitScores(values={})
        for group in self._groups[split]:
            limit, samples = _selection(group.limit, group.items, stage)
            prior = _itemwise_prior(after, group.objectives)
            extra = {}
            if prior is not None and _accepts(group.evaluator, "exclude"):
                extra["exclude"] = sorted({d for items in prior.values() for d, _ in items})
            else:
                prior = None
            result = group.evaluator.evaluate(
                model,
                tokenizer,
                limit=limit,
                seed=self.spec.seed,
                samples=samples,
                per_item=per_item or stage is not None or after is not None,
                **extra,
            )
            out.seconds += result.seconds
            out.requests += result.requests
            for objective in group.objectives:
                key = objective.metric_key(split)
                items = list(result.items.get(key, []))
                if prior is not None:
                    items = prior[objective.name] + items
                    value = sum(s for _, s in items) / len(items)
                elif key in result.metrics:
                    value = float(result.metrics[key])
                else:
                    known = ", ".join(sorted(result.metrics)) or "none"
                    raise SpecError(
                        f"{self.spec.source}: objectives.{objective.name}: the evaluator "
                        f"returned no metric {key!r}; it returned: {known}"
                    )
                if not math.isfinite(value):
                    raise ValueError(f"metric {key!r} is {value} (non-finite)")
                out.values[objective.name] = value
                if items:
                    out.items[objective.name] = items
                    if _is_mean(value, items):
                        out.itemwise.add(objective.name)
        return out


def _is_mean(value: float, items: Sequence[tuple[int, float]]) -> bool:
    """Whether a metric is the plain mean of its items (then stages can add items)."""
    return bool(items) and abs(sum(s for _, s in items) / len(items) - value) <= 1e-9


def _itemwise_prior(
    after: SplitScores | None, objectives: Sequence[Objective]
) -> dict[str, list[tuple[int, float]]] | None:
    """The previous stage's items of ``objectives`` when every one of them can be extended."""
    if after is None or not all(o.name in after.itemwise for o in objectives):
        return None
    return {o.name: list(after.items[o.name]) for o in objectives}


def _accepts(evaluator: Any, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(evaluator.evaluate).parameters
    except (TypeError, ValueError):
        return False


def _selection(
    limit: int | None, items: tuple[int, int] | None, stage: int | None
) -> tuple[int | None, Sequence[int] | None]:
    if items is not None:
        start, stop = items
        if stage is not None:
            stop = min(stop, start + stage)
        return None, list(range(start, stop))
    if stage is not None:
        limit = stage if limit is None else min(limit, stage)
    return limit, None


def _build(spec: SearchSpec, name: str, options: dict[str, Any]) -> Any:
    try:
        return evaluators.get(name, **options)
    except ConfigError as err:
        raise SpecError(f"{spec.source}: objectives: {err}") from None


def _produced(evaluator: Any) -> Mapping[str, Collection[str]]:
    """``{task: metric names}`` an evaluator reports before it scores, or nothing."""
    names = getattr(evaluator, "metric_names", None)
    return names() if callable(names) else {}


def _takes_tasks(name: str) -> bool:
    """Whether evaluator ``name`` is built from task names (lm_eval is; python, perplexity not)."""
    factory = evaluators.EVALUATORS.get(name)
    if factory is None:
        return False
    try:
        return "tasks" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
