"""Tables read from a study alone (the study is the truth): the final summary and all trials.

``summarize(study)`` gives the rows a search ends with (each baseline, then the best trial or
the Pareto front, with search and held-out scores); ``trials_table(study)`` lists every trial
for ``mergesearch status``. Both only read user attributes written by ``search.objective`` and
``search.study``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mergesearch.search import attrs as A
from mergesearch.search.optimize import versions
from mergesearch.search.optimize.samplers import is_baseline
from mergesearch.search.optimize.significance import Gain, paired_gain


@dataclass
class Row:
    label: str
    number: int
    method: str
    search: dict[str, float]
    score: float | None
    heldout: dict[str, float] = field(default_factory=dict)
    heldout_score: float | None = None
    heldout_items: dict[str, list] = field(default_factory=dict)  # objective -> [[doc, score]]


@dataclass
class Summary:
    objectives: list[str]
    rows: list[Row]
    heldout_split: str | None = None
    weights: dict[str, float] = field(default_factory=dict)  # signed, as in the held-out score

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)

    def gain(self, row: Row, reference: Row) -> Gain | None:
        """Held-out gain of ``row`` over ``reference``, with its paired standard error when
        both kept per-item scores."""
        if row.heldout_score is None or reference.heldout_score is None:
            return None
        paired = paired_gain(row.heldout_items, reference.heldout_items, self.weights)
        if paired is None:
            return Gain(row.heldout_score - reference.heldout_score)
        return paired

    def best_source(self, sources: list[str] | None = None) -> Row | None:
        """The baseline with the best held-out score among ``sources`` (every single-model
        baseline when not given)."""
        names = sources or [r.label for r in self.rows if r.label not in ("average",)]
        scored = [r for r in self.rows if r.label in names and r.heldout_score is not None]
        scored = [r for r in scored if not r.label.startswith(("best", "pareto"))]
        return max(scored, key=lambda r: r.heldout_score, default=None)

    def gain_lines(self, sources: list[str] | None = None, row: Row | None = None) -> list[str]:
        """How the best merge (or ``row``, one of the rows) compares, held out, with the best
        source and the average."""
        best = row or (self.best[0] if len(self.best) == 1 else None)
        if best is None or best.heldout_score is None:
            return []
        lines = []
        for label, reference in (
            ("best source", self.best_source(sources)),
            ("average", self.row("average")),
        ):
            gain = self.gain(best, reference) if reference is not None else None
            if gain is not None:
                name = "" if reference.label == label else f"{reference.label}, "
                what = f"{label} ({name}{reference.heldout_score:.3f})"
                lines.append(f"held-out gain over the {what}: {gain.describe()}")
        return lines

    @property
    def best(self) -> list[Row]:
        return [r for r in self.rows if r.label.startswith("best")]

    def render(self, *, gains: bool = True) -> str:
        """The table; then, with ``gains``, the best merge's held-out gains and their errors."""
        total = "weighted" if len(self.objectives) > 1 else "score"  # the weighted sum
        head = ["trial", "what", *self.objectives, total]
        split = self.heldout_split
        if split:
            head += [*self.objectives, total]
        body = []
        for r in self.rows:
            cells = [f"#{r.number}", f"{r.label} ({r.method})" if r.label != r.method else r.label]
            cells += [_num(r.search.get(o)) for o in self.objectives] + [_num(r.score)]
            if split:
                cells += [_num(r.heldout.get(o)) for o in self.objectives] + [_num(r.heldout_score)]
            body.append(cells)
        widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
        n = 2 + len(self.objectives) + 1
        groups = ""
        if split:
            left = sum(widths[:2]) + 4
            mid = sum(widths[2:n]) + 2 * (n - 3)
            groups = (
                " " * left
                + "search".center(mid)
                + "  "
                + split.center(sum(widths[n:]) + 2 * (len(widths) - n - 1))
            )
        lines = [groups.rstrip()] if groups else []
        for cells in [head, *body]:
            lines.append(
                "  ".join(
                    str(c).rjust(w) if i >= 2 else str(c).ljust(w)
                    for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                ).rstrip()
            )
        extra = self.gain_lines() if gains else []
        return "\n".join([*lines, *(["", *extra] if extra else [])])


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def objective_names(study: optuna.Study) -> list[str]:
    return [o["name"] for o in study.user_attrs.get(A.OBJECTIVES, [])]


def best_trials(study: optuna.Study, limit: int = 8) -> list[FrozenTrial]:
    """The best non-baseline trial(s) of the current spec version (``optimize.versions``): one
    for a weighted sum, the Pareto front otherwise."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not is_baseline(t) and A.DUPLICATE_OF not in t.user_attrs
    ]
    done = versions.of_current(study, done)
    if not done:
        return []
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    if len(signs) == 1:
        return [max(done, key=lambda t: (signs[0] * t.values[0], -t.number))]

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        pairs = [(s * a.values[i], s * b.values[i]) for i, s in enumerate(signs)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    front = [t for t in done if not any(dominates(o, t) for o in done)]
    unique = {tuple(t.values): t for t in sorted(front, key=lambda t: -t.number)}
    return sorted(unique.values(), key=lambda t: t.number)[:limit]


def signed_weights(study: optuna.Study) -> dict[str, float]:
    """Each objective's weight in "weighted", the one number every table ranks by: negated
    when the objective runs against the study's direction (a Pareto study counts as
    maximising). "weighted" is the weighted sum of the objectives, search or held out."""
    objectives = study.user_attrs.get(A.OBJECTIVES, [])
    pareto = len(study.directions) > 1
    direction = "maximize" if pareto else study.directions[0].name.lower()
    return {
        o["name"]: (1.0 if o.get("direction", direction) == direction else -1.0)
        * o.get("weight", 1.0)
        for o in objectives
    }


def weighted_sum(values: dict[str, float], weights: dict[str, float]) -> float | None:
    """``sum(weight * value)`` over the objectives ``values`` holds (``None`` when none)."""
    present = [name for name in weights if values.get(name) is not None]
    if not present:
        return None
    return sum(weights[name] * values[name] for name in present)


def _row(
    trial: FrozenTrial,
    label: str,
    objectives: list[str],
    heldout: dict,
    split: str | None,
    weights: dict[str, float],
) -> Row:
    metrics = trial.user_attrs.get(A.METRICS, {})
    search = {o: metrics[o]["search"] for o in objectives if "search" in metrics.get(o, {})}
    entry = heldout.get(str(trial.number), {}).get(split, {}) if split else {}
    held = {o: entry[o] for o in objectives if o in entry}
    if trial.values and len(trial.values) == 1:
        score = trial.values[0]
    else:  # a Pareto trial: its weighted sum, as "weighted" means everywhere
        score = weighted_sum(dict(zip(objectives, trial.values or [], strict=False)), weights)
    return Row(
        label=label,
        number=trial.number,
        method=trial.user_attrs.get(A.METHOD) or _method_of(trial),
        search=search,
        score=score,
        heldout=held,
        # recomputed, not read: a study scored before "weighted" meant a sum stored a mean
        heldout_score=weighted_sum(held, weights) if weights else entry.get("score"),
        heldout_items=dict(entry.get(A.PER_ITEM, {})),
    )


def _method_of(trial: FrozenTrial) -> str:
    text = trial.user_attrs.get(A.MERGE_CONFIG, "")
    for line in text.splitlines():
        if line.startswith("merge_method:"):
            return line.split(":", 1)[1].strip()
    return "?"


def summarize(study: optuna.Study) -> Summary:
    """Baselines first, then the best trial(s), with held-out scores when they were scored."""
    objectives = objective_names(study)
    heldout = study.user_attrs.get(A.HELDOUT, {})
    splits = sorted({s for e in heldout.values() for s in e if s != A.CONFIG_HASH})
    split = "heldout" if "heldout" in splits else (splits[0] if splits else None)
    weights = signed_weights(study) if study.user_attrs.get(A.OBJECTIVES) else {}
    rows = []
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in versions.of_current(study, [t for t in done if is_baseline(t)]):
        rows.append(_row(t, t.user_attrs[A.BASELINE], objectives, heldout, split, weights))
    best = best_trials(study)
    for t in best:
        label = "best" if len(best) == 1 else "pareto"
        rows.append(_row(t, label, objectives, heldout, split, weights))
    return Summary(objectives, rows, split, weights)


# ---------------------------------------------------------------------- every trial

STATE_NAMES = {
    TrialState.COMPLETE: "done",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def active_params(trial: FrozenTrial, used: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The parameters the trial's method read: the space has a fixed shape (every trial
    suggests every parameter), so the others are noise. ``used`` is the study's
    ``method_params``; without it every parameter is shown."""
    method = trial.params.get("method") or trial.user_attrs.get(A.METHOD)
    wanted = (used or {}).get(method)
    return {
        name: value
        for name, value in trial.params.items()
        if name != "method" and (wanted is None or name in wanted)
    }


def describe_params(
    trial: FrozenTrial, used: dict[str, list[str]] | None = None, width: int | None = None
) -> str:
    """A short text of the parameters a trial's method read (the name of a baseline), cut to
    ``width`` characters when given."""
    if is_baseline(trial):
        return f"baseline {trial.user_attrs[A.BASELINE]}"
    parts = [
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in active_params(trial, used).items()
    ]
    text = " ".join(parts)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: number, state, what, params (text and values), per-objective search
    scores, values, weighted (the weighted sum, for Pareto studies too), merge and eval seconds,
    items, note (duplicate, pruned stage, failure reason), best flag, spec version."""
    objectives = objective_names(study)
    best = {t.number for t in best_trials(study)}
    used = study.user_attrs.get(A.METHOD_PARAMS)
    weights = signed_weights(study) if study.user_attrs.get(A.OBJECTIVES) else {}
    rows = []
    trials = study.get_trials(deepcopy=False)
    retried_as = {n: t.number for t in trials for n in t.system_attrs.get(A.RETRY_HISTORY, ())[-1:]}
    for t in trials:
        attrs = t.user_attrs
        metrics = attrs.get(A.METRICS, {})
        note = ""
        if A.DUPLICATE_OF in attrs:
            note = f"same config as #{attrs['duplicate_of']}"
        elif t.state == TrialState.PRUNED:
            note = f"pruned after {attrs.get('stage')} items"
        elif A.FAIL_REASON in attrs:
            note = attrs[A.FAIL_REASON]
        elif t.number in retried_as:
            note = f"worker lost; run again as #{retried_as[t.number]}"
        rows.append(
            {
                "number": t.number,
                "state": STATE_NAMES.get(t.state, t.state.name.lower()),
                "what": attrs.get(A.BASELINE) or attrs.get(A.METHOD) or _method_of(t),
                "params": describe_params(t, used),
                "param_values": {} if is_baseline(t) else active_params(t, used),
                "scores": {o: metrics.get(o, {}).get("search") for o in objectives},
                "values": list(t.values) if t.values else None,
                "weighted": _weighted_value(t, objectives, weights),
                "merge_seconds": attrs.get(A.MERGE_SECONDS),
                "eval_seconds": attrs.get(A.EVAL_SECONDS),
                "items": attrs.get(A.ITEMS),
                "note": note,
                "best": t.number in best,
                "spec_version": versions.version_of(t),
            }
        )
    return rows


def _weighted_value(
    trial: FrozenTrial, objectives: list[str], weights: dict[str, float]
) -> float | None:
    if not trial.values:
        return None
    if len(trial.values) == 1:
        return trial.values[0]
    return weighted_sum(dict(zip(objectives, trial.values, strict=False)), weights)
