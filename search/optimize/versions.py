"""What a study's trials were scored against, and when that changed: spec versions.

A trial's value means something only next to the values of trials scored the same way: same
sources, same objectives (evaluator, task, metric, split, item limit, weight, direction,
options). The study therefore keeps a fingerprint of those, taken when it was created. A resume
whose spec differs in any of them is refused with one line naming the first difference: its new
trials would be ranked against scores of another objective. ``allow_spec_change`` (the CLI's
``--allow-spec-change``) goes on instead and records a new *version*: the spec text, its
fingerprint and the first trial scored under it. Every trial carries the version it ran under,
so the duplicate cache (``optimize.objective``), the baselines, the best trial and the held-out
scores compare trials of one version only, and report and model card print the spec a trial
really ran under.

Things that change how fast, not what, is scored (threads, batch size, the budget, the
sampler) are not part of the fingerprint: changing them resumes as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from mergesearch.search import attrs as A
from mergesearch.search.spec.schema import SearchSpec

# evaluator options that change the speed of scoring, not the scores
SPEED_OPTIONS = ("threads", "batch_size", "builtin_tasks")
FIRST = 1  # the version of a trial or study that predates versions


@dataclass(frozen=True)
class SpecVersion:
    number: int
    first_trial: int  # the first trial number scored under it
    spec: str  # the spec YAML (passwords hidden)
    fingerprint: dict[str, str]


def fingerprint(spec: SearchSpec, directions: Mapping[str, str]) -> dict[str, str]:
    """``{key path: value}`` of everything that decides a trial's scores; ``directions`` are the
    objectives' resolved directions (``Scorer.directions``)."""
    out = {"combine": spec.combine, "objectives": ", ".join(o.name for o in spec.objectives)}
    for name in spec.sources.names():
        out[f"sources.{name}"] = spec.sources.path(name)
    for objective in spec.objectives:
        key = f"objectives.{objective.name}"
        options = {**spec.evaluators.get(objective.evaluator, {}), **objective.options}
        scoring = {k: v for k, v in options.items() if k not in SPEED_OPTIONS}
        out[f"{key}.evaluator"] = objective.evaluator
        out[f"{key}.metric"] = objective.metric
        out[f"{key}.weight"] = f"{objective.weight:g}"
        out[f"{key}.direction"] = directions.get(objective.name, objective.direction or "")
        out[f"{key}.options"] = json.dumps(scoring, sort_keys=True, default=str)
        out[f"{key}.splits"] = ", ".join(sorted(objective.splits))
        for split, sel in sorted(objective.splits.items()):
            out[f"{key}.splits.{split}.task"] = str(sel.task)
            out[f"{key}.splits.{split}.limit"] = str(sel.limit)
            out[f"{key}.splits.{split}.items"] = str(list(sel.items) if sel.items else None)
    return out


def difference(old: Mapping[str, str], new: Mapping[str, str]) -> str | None:
    """The first key whose value differs, worded for one line; ``None`` when they agree."""
    for key in sorted(old.keys() | new.keys(), key=_order):
        before, after = old.get(key), new.get(key)
        if before != after:
            if before is None:
                return f"{key} is new ({after!r})"
            if after is None:
                return f"{key} is gone (was {before!r})"
            return f"{key} was {before!r}, now {after!r}"
    return None


def _order(key: str) -> tuple[int, str]:
    """Lists of names first (an added objective reads better than its first new field)."""
    return (0 if key in ("objectives", "combine") else 1, key)


def versions(study: optuna.Study) -> list[SpecVersion]:
    """The study's spec versions, oldest first; a study made before versions has one, from its
    stored spec."""
    stored = study.user_attrs.get(A.SPEC_VERSIONS) or []
    if not stored:
        return [SpecVersion(FIRST, 0, study.user_attrs.get(A.SPEC) or "", {})]
    return [
        SpecVersion(int(v["number"]), int(v["first_trial"]), v.get("spec", ""), v["fingerprint"])
        for v in stored
    ]


def current(study: optuna.Study) -> int:
    return versions(study)[-1].number


def version_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(A.SPEC_VERSION, FIRST))


def spec_of(study: optuna.Study, trial: FrozenTrial) -> SpecVersion:
    """The spec version ``trial`` ran under."""
    number = version_of(trial)
    found = [v for v in versions(study) if v.number == number]
    return found[0] if found else versions(study)[0]


def of_current(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials of ``trials`` scored under the study's current spec version."""
    latest = current(study)
    return [t for t in trials if version_of(t) == latest]


def record(
    study: optuna.Study, spec: SearchSpec, prints: dict[str, str], *, allow_change: bool
) -> tuple[int, str | None]:
    """Compare the study's last version with ``prints``; return (version to run under, what
    changed). A change is recorded as a new version when ``allow_change``; otherwise the
    caller refuses the resume with the returned difference (version is then the old one)."""
    stored: list[dict[str, Any]] = list(study.user_attrs.get(A.SPEC_VERSIONS) or [])
    entry = {"spec": spec.to_yaml(), "fingerprint": prints}
    if not stored:
        # a new study, or one made before versions: it ran under this spec, as far as is known
        study.set_user_attr(A.SPEC_VERSIONS, [{"number": FIRST, "first_trial": 0, **entry}])
        return FIRST, None
    last = stored[-1]
    change = difference(last["fingerprint"], prints)
    if change is None:
        return int(last["number"]), None
    if not allow_change:
        return int(last["number"]), change
    number = int(last["number"]) + 1
    stored.append({"number": number, "first_trial": len(study.trials), **entry})
    study.set_user_attr(A.SPEC_VERSIONS, stored)
    return number, change
