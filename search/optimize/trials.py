"""What a finished (or running) study says about its trials, for report, export and dashboard.

Reads only what ``search.study`` and ``search.objective`` store: the study's ``objectives``
(name, weight, direction), ``sources`` and ``heldout`` user attributes, and each trial's
``merge_config``, ``metrics``, ``baseline`` and ``duplicate_of``. ``pick_trial`` is the one place
that decides which trial "the best" is, so ``report`` and ``export`` always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
import yaml
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from mergesearch import merging
from mergesearch.merging.errors import did_you_mean
from mergesearch.search import attrs as A
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize import versions
from mergesearch.search.optimize.samplers import is_baseline
from mergesearch.search.optimize.summary import best_trials

PICKS = ("weighted", "knee")  # named choices from a Pareto front, besides an objective's name


@dataclass(frozen=True)
class ObjectiveInfo:
    name: str
    weight: float
    direction: str  # "maximize" | "minimize"

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "maximize" else -1.0


def objectives(study: optuna.Study) -> list[ObjectiveInfo]:
    """The study's objectives; a study made outside ``mergesearch`` gets one per value."""
    stored = study.user_attrs.get(A.OBJECTIVES)
    if stored:
        return [
            ObjectiveInfo(o["name"], float(o.get("weight", 1.0)), o.get("direction", "maximize"))
            for o in stored
        ]
    names = study.metric_names or [
        "value" if len(study.directions) == 1 else f"value{i}" for i in range(len(study.directions))
    ]
    return [
        ObjectiveInfo(n, 1.0, "maximize" if d == StudyDirection.MAXIMIZE else "minimize")
        for n, d in zip(names, study.directions, strict=True)
    ]


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def value_name(study: optuna.Study) -> str:
    """What the study value of a single-objective study is called in tables and plots."""
    names = [o.name for o in objectives(study)]
    return names[0] if len(names) == 1 else "weighted score"


def baselines(study: optuna.Study) -> list[FrozenTrial]:
    """Completed baseline trials (each source alone, the average) of the current spec version,
    in trial order."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return versions.of_current(study, [t for t in done if is_baseline(t)])


def baseline_name(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(A.BASELINE)


def search_trials(study: optuna.Study, *, unique: bool = True) -> list[FrozenTrial]:
    """Completed trials the sampler proposed under the current spec version (the others were
    scored another way); ``unique`` leaves out answered duplicates."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    found = [
        t for t in done if not is_baseline(t) and not (unique and A.DUPLICATE_OF in t.user_attrs)
    ]
    return versions.of_current(study, found)


def method_of(trial: FrozenTrial) -> str:
    if A.BASELINE in trial.user_attrs:
        return str(trial.user_attrs[A.BASELINE])
    if A.METHOD in trial.user_attrs:
        return str(trial.user_attrs[A.METHOD])
    config = merge_config_dict(trial)
    return str(config.get("merge_method", "?")) if config else "?"


def merge_config_dict(trial: FrozenTrial) -> dict | None:
    text = trial.user_attrs.get(A.MERGE_CONFIG)
    if not text:
        return None
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else None


def merge_config(trial: FrozenTrial) -> merging.MergeConfig:
    """The trial's merge config, validated; ``SpecError`` when the trial has none."""
    data = merge_config_dict(trial)
    if data is None:
        raise SpecError(
            f"trial {trial.number} has no merge_config user attribute (state "
            f"{trial.state.name}); choose a trial that merged"
        )
    return merging.load_merge_config(data, source_name=f"trial {trial.number} merge_config")


def scores(study: optuna.Study, trial: FrozenTrial) -> dict[str, dict[str, float]]:
    """``{split: {objective: value}}``: search scores from the trial, held-out ones (and their
    weighted ``score``) from the study when the search scored that trial on them."""
    out: dict[str, dict[str, float]] = {}
    for name, per_split in (trial.user_attrs.get(A.METRICS) or {}).items():
        for split, value in (per_split or {}).items():
            out.setdefault(split, {})[name] = value
    held = (study.user_attrs.get(A.HELDOUT) or {}).get(str(trial.number), {})
    for split, values in held.items():
        if isinstance(values, dict):
            out.setdefault(split, {}).update(values)
    return out


def heldout_split(study: optuna.Study) -> str | None:
    """The split held out from the search (``heldout`` when present), if any was scored."""
    splits = {s for entry in (study.user_attrs.get(A.HELDOUT) or {}).values() for s in entry} - {
        A.CONFIG_HASH
    }
    if "heldout" in splits:
        return "heldout"
    return min(splits) if splits else None


def weighted(study: optuna.Study, trial: FrozenTrial) -> float:
    """One number to rank any trial by: the study value for a single objective; for a Pareto
    study the weighted sum of the objectives (minimised ones negated)."""
    if not trial.values:
        return math.nan
    if len(trial.values) == 1:
        return trial.values[0]
    infos = objectives(study)
    return sum(o.sign * o.weight * v for o, v in zip(infos, trial.values, strict=True))


def rank_key(study: optuna.Study):
    """Sort key putting the best trial first."""
    sign = 1.0
    if not is_multi_objective(study) and study.direction == StudyDirection.MINIMIZE:
        sign = -1.0
    return lambda t: (-sign * weighted(study, t), t.number)


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    return best_trials(study, limit=10_000) if is_multi_objective(study) else []


def pick_trial(
    study: optuna.Study, number: int | None = None, pick: str = "weighted"
) -> tuple[FrozenTrial, str]:
    """The trial to report or export, and a phrase saying why it was chosen.

    ``number`` picks that trial (it must have completed). Otherwise a single-objective study
    gives its best search trial; a Pareto study gives one trial of its front: ``weighted``
    (highest weighted sum of objectives), ``knee`` (closest to the ideal point once each
    objective is scaled to [0, 1] over the front) or the best on one objective, by name.
    """
    if number is not None:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        if number not in trials:
            known = f"trials are 0..{max(trials)}" if trials else "it has no trials"
            raise SpecError(f"study {study.study_name!r}: no trial {number} ({known})")
        trial = trials[number]
        if trial.state != TrialState.COMPLETE:
            reason = trial.user_attrs.get(A.FAIL_REASON)
            why = f" ({reason})" if reason else ""
            raise SpecError(
                f"study {study.study_name!r}: trial {number} is {trial.state.name}{why}; "
                "choose a completed trial (see `mergesearch status`)"
            )
        return trial, f"trial {number}, as asked"

    best = best_trials(study, limit=10_000)
    if not best:
        raise SpecError(
            f"study {study.study_name!r} has no completed search trial yet; run "
            "`mergesearch search` first (or pass --trial N for a baseline)"
        )
    if not is_multi_objective(study):
        return best[0], f"best of {len(search_trials(study))} search trials"

    infos = objectives(study)
    names = [o.name for o in infos]
    n = len(best)
    if pick == "weighted":
        trial = max(best, key=lambda t: (weighted(study, t), -t.number))
        weights = ", ".join(f"{o.name} x{o.weight:g}" for o in infos)
        return trial, f"Pareto front ({n} trials), highest weighted sum ({weights})"
    if pick == "knee":
        return _knee(best, infos), f"Pareto front ({n} trials), closest to the ideal point"
    if pick in names:
        i = names.index(pick)
        trial = max(best, key=lambda t: (infos[i].sign * t.values[i], weighted(study, t)))
        return trial, f"Pareto front ({n} trials), best on {pick}"
    choices = [*PICKS, *names]
    raise SpecError(
        f"--pick {pick!r}: unknown choice{did_you_mean(pick, choices)}; "
        f"choose one of: {', '.join(choices)}"
    )


def _knee(front: list[FrozenTrial], infos: list[ObjectiveInfo]) -> FrozenTrial:
    signed = [[o.sign * v for o, v in zip(infos, t.values, strict=True)] for t in front]
    columns = list(zip(*signed, strict=True))
    lows = [min(c) for c in columns]
    spans = [(max(c) - min(c)) or 1.0 for c in columns]

    def distance(t: FrozenTrial) -> float:
        scaled = [
            (o.sign * v - lo) / span
            for o, v, lo, span in zip(infos, t.values, lows, spans, strict=True)
        ]
        return math.sqrt(sum((1.0 - s) ** 2 for s in scaled))

    return min(front, key=lambda t: (distance(t), t.number))
