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

from mergesearch.search.optimize.samplers import BASELINE_ATTR, is_baseline


@dataclass
class Row:
    label: str
    number: int
    method: str
    search: dict[str, float]
    score: float | None
    heldout: dict[str, float] = field(default_factory=dict)
    heldout_score: float | None = None


@dataclass
class Summary:
    objectives: list[str]
    rows: list[Row]
    heldout_split: str | None = None

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)

    @property
    def best(self) -> list[Row]:
        return [r for r in self.rows if r.label.startswith("best")]

    def render(self) -> str:
        head = ["trial", "what", *self.objectives, "score"]
        split = self.heldout_split
        if split:
            head += [*self.objectives, "score"]
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
        return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def objective_names(study: optuna.Study) -> list[str]:
    return [o["name"] for o in study.user_attrs.get("objectives", [])]


def best_trials(study: optuna.Study, limit: int = 8) -> list[FrozenTrial]:
    """The best non-baseline trial(s): one for a weighted sum, the Pareto front otherwise."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not is_baseline(t) and "duplicate_of" not in t.user_attrs
    ]
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


def _row(
    trial: FrozenTrial, label: str, objectives: list[str], heldout: dict, split: str | None
) -> Row:
    metrics = trial.user_attrs.get("metrics", {})
    search = {o: metrics[o]["search"] for o in objectives if "search" in metrics.get(o, {})}
    entry = heldout.get(str(trial.number), {}).get(split, {}) if split else {}
    return Row(
        label=label,
        number=trial.number,
        method=trial.user_attrs.get("method") or _method_of(trial),
        search=search,
        score=trial.values[0] if trial.values and len(trial.values) == 1 else None,
        heldout={o: entry[o] for o in objectives if o in entry},
        heldout_score=entry.get("score"),
    )


def _method_of(trial: FrozenTrial) -> str:
    text = trial.user_attrs.get("merge_config", "")
    for line in text.splitlines():
        if line.startswith("merge_method:"):
            return line.split(":", 1)[1].strip()
    return "?"


def summarize(study: optuna.Study) -> Summary:
    """Baselines first, then the best trial(s), with held-out scores when they were scored."""
    objectives = objective_names(study)
    heldout = study.user_attrs.get("heldout", {})
    splits = sorted({s for e in heldout.values() for s in e if s not in ("config_hash",)})
    split = "heldout" if "heldout" in splits else (splits[0] if splits else None)
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_baseline(t):
            rows.append(_row(t, t.user_attrs[BASELINE_ATTR], objectives, heldout, split))
    best = best_trials(study)
    for t in best:
        label = "best" if len(best) == 1 else "pareto"
        rows.append(_row(t, label, objectives, heldout, split))
    return Summary(objectives, rows, split)


# ---------------------------------------------------------------------- every trial

STATE_NAMES = {
    TrialState.COMPLETE: "done",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def describe_params(
    trial: FrozenTrial, used: dict[str, list[str]] | None = None, width: int = 72
) -> str:
    """A short text of the parameters a trial's method read (the name of a baseline)."""
    if is_baseline(trial):
        return f"baseline {trial.user_attrs[BASELINE_ATTR]}"
    method = trial.params.get("method") or trial.user_attrs.get("method")
    wanted = (used or {}).get(method)
    parts = []
    for name, value in trial.params.items():
        if name == "method" or (wanted is not None and name not in wanted):
            continue
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: number, state, what, params, per-objective search scores, value,
    merge and eval seconds, note (duplicate, pruned stage, failure reason), best flag."""
    objectives = objective_names(study)
    best = {t.number for t in best_trials(study)}
    used = study.user_attrs.get("method_params")
    rows = []
    trials = study.get_trials(deepcopy=False)
    retried_as = {n: t.number for t in trials for n in t.system_attrs.get("retry_history", ())[-1:]}
    for t in trials:
        attrs = t.user_attrs
        metrics = attrs.get("metrics", {})
        note = ""
        if "duplicate_of" in attrs:
            note = f"same config as #{attrs['duplicate_of']}"
        elif t.state == TrialState.PRUNED:
            note = f"pruned after {attrs.get('stage')} items"
        elif "fail_reason" in attrs:
            note = attrs["fail_reason"]
        elif t.number in retried_as:
            note = f"worker lost; run again as #{retried_as[t.number]}"
        rows.append(
            {
                "number": t.number,
                "state": STATE_NAMES.get(t.state, t.state.name.lower()),
                "what": attrs.get(BASELINE_ATTR) or attrs.get("method") or _method_of(t),
                "params": describe_params(t, used),
                "scores": {o: metrics.get(o, {}).get("search") for o in objectives},
                "values": list(t.values) if t.values else None,
                "merge_seconds": attrs.get("merge_seconds"),
                "eval_seconds": attrs.get("eval_seconds"),
                "note": note,
                "best": t.number in best,
            }
        )
    return rows
