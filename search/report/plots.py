"""The report's figures: the data is prepared once (here), then drawn twice.

Plotly draws the interactive figures of ``report.html`` (here); matplotlib draws the PNGs
(``search.plots_png``: plotly's PNG export needs kaleido, which downloads a browser). Parallel coordinates and the Pareto front in
the HTML are Optuna's own plotly figures, drawn on a copy of the study without baselines and
answered duplicates (baselines suggest no parameters and would empty the search space).

Figures: optimisation history (sources as reference lines), parameter importances per method
(each over that method's trials and the parameters it reads: the space has a fixed shape, and
pooling methods would credit a parameter for the method that ignores it), parallel
coordinates, objective against objective (two or more objectives), Pareto front
(multi-objective), per-layer parameter profile of the chosen trial (one line per model and
tensor filter).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial

from mergesearch import merging
from mergesearch.merging.architecture import parse_layer_name
from mergesearch.search import attrs as A
from mergesearch.search.optimize import trials as T

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class StudyData:
    """Everything the figures need, read from the study once."""

    study: optuna.Study
    objectives: list[T.ObjectiveInfo]
    search: list[FrozenTrial]
    baselines: list[FrozenTrial]
    chosen: FrozenTrial | None
    source_names: dict[str, str] = field(default_factory=dict)
    _copy: optuna.Study | None = field(default=None, repr=False)

    @property
    def multi(self) -> bool:
        return T.is_multi_objective(self.study)

    def search_study(self) -> optuna.Study:
        """An in-memory copy holding the search trials only (for Optuna's own plots)."""
        if self._copy is None:
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            try:
                self._copy = optuna.create_study(directions=self.study.directions)
            finally:
                optuna.logging.set_verbosity(verbosity)
            self._copy.add_trials(self.search)
        return self._copy

    def label(self, model_ref: str) -> str:
        return self.source_names.get(model_ref) or Path(model_ref).name or model_ref


def prepare(study: optuna.Study, chosen: FrozenTrial | None) -> StudyData:
    sources = study.user_attrs.get(A.SOURCES) or {}
    return StudyData(
        study=study,
        objectives=T.objectives(study),
        search=sorted(T.search_trials(study), key=lambda t: t.number),
        baselines=T.baselines(study),
        chosen=chosen,
        source_names={str(path): name for name, path in sources.items()},
    )


# ------------------------------------------------------------------------------ history


@dataclass
class Series:
    name: str
    direction: str
    x: list[int]
    y: list[float]
    best: list[float]
    refs: list[tuple[str, float]]


def _value(index: int):
    return lambda t: t.values[index]


def _value_getters(data: StudyData) -> list[tuple[str, str, object]]:
    """(name, direction, trial -> value) of each history panel."""

    def metric(name: str):
        return lambda t: (t.user_attrs.get(A.METRICS) or {}).get(name, {}).get("search")

    if data.multi:
        return [(o.name, o.direction, _value(i)) for i, o in enumerate(data.objectives)]
    direction = data.study.direction.name.lower()
    panels = [(T.value_name(data.study), direction, lambda t: t.values[0])]
    if len(data.objectives) > 1:
        panels += [(o.name, o.direction, metric(o.name)) for o in data.objectives]
    return panels


def history(data: StudyData) -> list[Series]:
    out = []
    for name, direction, get in _value_getters(data):
        points = [(t.number, get(t)) for t in data.search]
        points = [(n, v) for n, v in points if v is not None]
        best, running = [], None
        for _, v in points:
            better = running is None or (v > running if direction == "maximize" else v < running)
            running = v if better else running
            best.append(running)
        refs = [(T.baseline_name(t) or "?", get(t)) for t in data.baselines]
        out.append(
            Series(
                name,
                direction,
                [n for n, _ in points],
                [v for _, v in points],
                best,
                [(r, v) for r, v in refs if v is not None],
            )
        )
    return out


# ------------------------------------------------------------------------------ importances


Importances = dict[str, dict[str, dict[str, float]]]  # method -> target -> param -> importance


@dataclass
class MethodStats:
    method: str
    trials: int
    best: float
    mean: float


def method_stats(data: StudyData) -> list[MethodStats]:
    """Per method: how many search trials, their best and mean weighted score (best first)."""
    by_method: dict[str, list[float]] = defaultdict(list)
    for t in data.search:
        by_method[T.method_of(t)].append(T.weighted(data.study, t))
    sign = -1.0 if not data.multi and data.study.direction.name == "MINIMIZE" else 1.0
    stats = [
        MethodStats(m, len(v), (max if sign > 0 else min)(v), sum(v) / len(v))
        for m, v in by_method.items()
    ]
    return sorted(stats, key=lambda s: -sign * s.best)


def importances(data: StudyData) -> tuple[Importances, str | None]:
    """``{method: {target: {param: importance}}}`` over each method's own trials and the
    parameters it reads, or an empty dict and the reason."""
    used = data.study.user_attrs.get(A.METHOD_PARAMS) or {}
    by_method: dict[str, list[FrozenTrial]] = defaultdict(list)
    for t in data.search:
        by_method[T.method_of(t)].append(t)
    targets = (
        [(o.name, _value(i)) for i, o in enumerate(data.objectives)]
        if data.multi
        else [(T.value_name(data.study), None)]
    )
    out: Importances = {}
    reasons = []
    for method, trials in sorted(by_method.items()):
        params = [p for p in used.get(method, sorted(trials[0].params)) if p != "method"]
        varying = [p for p in params if len({t.params.get(p) for t in trials}) > 1]
        if len(trials) < 3 or not varying:
            reasons.append(f"{method}: {len(trials)} trial(s), {len(varying)} varying parameter(s)")
            continue
        copy = _copy_with(data.study, trials, varying)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[method] = {
                    name: optuna.importance.get_param_importances(
                        copy, evaluator=PedAnovaImportanceEvaluator(), target=target
                    )
                    for name, target in targets
                }
        except (RuntimeError, ValueError) as err:
            reasons.append(f"{method}: cannot be computed here ({err})")
    if not out:
        why = "; ".join(reasons) or "no completed search trial"
        return {}, f"needs a method with at least 3 trials and a varying parameter ({why})"
    return out, None


def _copy_with(study: optuna.Study, trials: list[FrozenTrial], params: list[str]) -> optuna.Study:
    """An in-memory study of ``trials`` with only ``params`` as their parameters."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        copy = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in trials:
        kept = [p for p in params if p in t.params]
        copy.add_trial(
            optuna.trial.create_trial(
                params={p: t.params[p] for p in kept},
                distributions={p: t.distributions[p] for p in kept},
                values=t.values,
            )
        )
    return copy


# ------------------------------------------------------------------------------ objectives


@dataclass
class Pair:
    """One objective against another: search trials, baselines, the chosen trial."""

    x: str
    y: str
    trials: list[tuple[int, float, float]]  # (number, x, y)
    refs: list[tuple[str, float, float]]  # (baseline, x, y)
    chosen: tuple[int, float, float] | None


MAX_PAIRED_OBJECTIVES = 4  # 6 panels; more objectives than that are read better in a table


def objective_pairs(data: StudyData) -> list[Pair]:
    """Each pair of objectives (search split), when the study has two or more."""
    names = [o.name for o in data.objectives][:MAX_PAIRED_OBJECTIVES]

    def point(t: FrozenTrial, x: str, y: str) -> tuple[float, float] | None:
        metrics = t.user_attrs.get(A.METRICS) or {}
        a, b = (metrics.get(n, {}).get("search") for n in (x, y))
        return (a, b) if a is not None and b is not None else None

    pairs = []
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            trials = [(t.number, *xy) for t in data.search if (xy := point(t, x, y))]
            refs = [
                (T.baseline_name(t) or "?", *xy) for t in data.baselines if (xy := point(t, x, y))
            ]
            chosen = None
            if data.chosen is not None and (xy := point(data.chosen, x, y)):
                chosen = (data.chosen.number, *xy)
            pairs.append(Pair(x, y, trials, refs, chosen))
    return pairs


# ------------------------------------------------------------------------------ profile


@dataclass
class Profile:
    """Per-layer values of the chosen trial's parameters, as the merge engine resolves them."""

    method: str
    panels: dict[str, dict[str, list[tuple[int, float]]]]  # param -> series label -> points
    note: str | None = None


def layer_profile(data: StudyData) -> Profile | None:
    if data.chosen is None:
        return None
    if T.merge_config_dict(data.chosen) is None:
        return Profile("?", {}, "the trial has no merge config")
    try:
        config = T.merge_config(data.chosen)
        plan = merging.Merger(cache_bytes=0).plan(config)
    except merging.MergeError as err:
        return Profile("?", {}, f"the sources are needed to resolve it here ({err})")
    filters = _filters(T.merge_config_dict(data.chosen))
    per_layer: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for job in plan.jobs:
        out = parse_layer_name(job.out_name)
        if out is None:
            continue
        layer = out.index
        # tensors of one filter share one line (the first filter a name contains wins, as in
        # the engine); without filters every tensor of the layer is one line
        kind = next((f for f in filters if f in job.out_name), "rest") if filters else ""
        if plan.method.stacks_layers:  # no parameters: show where each layer comes from
            for ref in job.inputs:
                source = parse_layer_name(ref.name)
                if source is not None:
                    per_layer[("source layer", data.label(ref.model))][layer].append(source.index)
            continue
        for ref, values in zip(job.inputs, job.per_model, strict=True):
            for param, value in values.items():
                if _is_number(value):
                    label = " ".join(x for x in (data.label(ref.model), kind) if x)
                    per_layer[(param, label)][layer].append(float(value))
        for param, value in job.params.items():
            if _is_number(value):
                per_layer[(param, kind)][layer].append(float(value))
    panels: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for (param, label), layers in sorted(per_layer.items()):
        panels[param][label or param] = [(k, sum(v) / len(v)) for k, v in sorted(layers.items())]
    if not panels:
        return Profile(plan.method.name, {}, "the merge has no per-layer numeric parameters")
    return Profile(plan.method.name, dict(panels))


def _filters(config: dict | None) -> list[str]:
    """The tensor-name filters a config's parameters use, in the order they are listed."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            flt = node.get("filter")
            if isinstance(flt, str) and flt not in found:
                found.append(flt)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config or {})
    return found


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------ plotly


def _trial_points(first: bool) -> dict[str, Any]:
    """Search trials as points, alike in every panel and plot; ``first``: the panel whose
    legend entry stands for all."""
    return {
        "mode": "markers",
        "name": "trial",
        "legendgroup": "trial",
        "showlegend": first,
        "marker": {"color": COLORS[0], "size": 7},
    }


def _reference_color(k: int) -> str:
    """The colour of the ``k``-th reference (a source alone, their average): after the
    trials' and the best-so-far line's."""
    return COLORS[(k + 2) % len(COLORS)]


def _reference_marker(k: int) -> dict[str, Any]:
    """A reference as one point (against another objective): a diamond in its colour."""
    return {"symbol": "diamond", "size": 11, "color": _reference_color(k)}


def plotly_history(data: StudyData, series: list[Series]):
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=len(series),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[f"{s.name} ({s.direction})" for s in series],
        vertical_spacing=0.12 if len(series) > 1 else 0.1,
    )
    for row, s in enumerate(series, start=1):
        first = row == 1
        fig.add_scatter(
            x=s.x,
            y=s.y,
            **_trial_points(first),
            hovertemplate="trial %{x}: %{y:.4f}<extra></extra>",
            row=row,
            col=1,
        )
        fig.add_scatter(
            x=s.x,
            y=s.best,
            mode="lines",
            line={"shape": "hv", "color": COLORS[1]},
            name="best so far",
            legendgroup="best",
            showlegend=first,
            row=row,
            col=1,
        )
        if data.chosen is not None and data.chosen.number in s.x:
            i = s.x.index(data.chosen.number)
            fig.add_scatter(
                x=[s.x[i]],
                y=[s.y[i]],
                mode="markers",
                name="chosen",
                legendgroup="chosen",
                showlegend=first,
                marker={
                    "symbol": "star",
                    "size": 16,
                    "color": "#f2b701",
                    "line": {"width": 1, "color": "black"},
                },
                row=row,
                col=1,
            )
        # reference lines named in the legend, not by labels on the plot: sources that score
        # alike would print their labels over each other
        span = [min(s.x), max(s.x)] if s.x else [0, 1]
        for k, (name, value) in enumerate(s.refs):
            fig.add_scatter(
                x=span,
                y=[value, value],
                mode="lines",
                line={"dash": "dash", "color": _reference_color(k), "width": 1.5},
                name=ref_label(name),
                legendgroup=f"ref-{name}",
                showlegend=first,
                hovertemplate=f"{ref_label(name)}: %{{y:.4f}}<extra></extra>",
                row=row,
                col=1,
            )
    fig.update_xaxes(title_text="trial", row=len(series), col=1)
    fig.update_layout(height=320 * len(series) + 80, margin={"t": 60}, template="plotly_white")
    return fig


def ref_label(name: str) -> str:
    return "average of sources" if name == "average" else f"source: {name}"


def plotly_importances(table: Importances):
    from plotly.subplots import make_subplots

    methods = list(table)
    fig = make_subplots(
        rows=len(methods), cols=1, subplot_titles=[f"{m}" for m in methods], vertical_spacing=0.08
    )
    targets = list(next(iter(table.values())))
    rows_of = [max(len(v) for v in table[m].values()) for m in methods]
    for row, method in enumerate(methods, start=1):
        for k, target in enumerate(targets):
            values = table[method][target]
            names = list(reversed(list(values)))
            fig.add_bar(
                x=[values[n] for n in names],
                y=names,
                orientation="h",
                name=target,
                legendgroup=target,
                showlegend=row == 1 and len(targets) > 1,
                marker_color=COLORS[k % len(COLORS)],
                row=row,
                col=1,
            )
        fig.update_xaxes(title_text="importance (PED-ANOVA)", row=row, col=1)
    fig.update_layout(
        barmode="group",
        template="plotly_white",
        height=max(300, sum(26 * n * len(targets) + 90 for n in rows_of) + 60),
    )
    return fig


def plotly_pairs(pairs: list[Pair]):
    from plotly.subplots import make_subplots

    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{p.y} vs {p.x}" for p in pairs])
    for i, pair in enumerate(pairs):
        row, col, first = i // cols + 1, i % cols + 1, i == 0
        fig.add_scatter(
            x=[t[1] for t in pair.trials],
            y=[t[2] for t in pair.trials],
            text=[f"trial {t[0]}" for t in pair.trials],
            **_trial_points(first),
            hovertemplate="%{text}: (%{x:.4f}, %{y:.4f})<extra></extra>",
            row=row,
            col=col,
        )
        for k, (name, x, y) in enumerate(pair.refs):
            fig.add_scatter(
                x=[x],
                y=[y],
                mode="markers",
                name=ref_label(name),
                legendgroup=f"ref-{name}",
                showlegend=first,
                marker=_reference_marker(k),
                row=row,
                col=col,
            )
        if pair.chosen is not None:
            fig.add_scatter(
                x=[pair.chosen[1]],
                y=[pair.chosen[2]],
                mode="markers",
                name=f"chosen: trial {pair.chosen[0]}",
                legendgroup="chosen",
                showlegend=first,
                marker={"symbol": "star", "size": 16, "color": "#f2b701", "line": {"width": 1}},
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text=pair.x, row=row, col=col)
        fig.update_yaxes(title_text=pair.y, row=row, col=col)
    fig.update_layout(template="plotly_white", height=420 * rows + 40)
    return fig


def plotly_parallel(data: StudyData):
    copy = data.search_study()
    if data.multi:
        return optuna.visualization.plot_parallel_coordinate(
            copy, target=lambda t: T.weighted(data.study, t), target_name="weighted score"
        )
    return optuna.visualization.plot_parallel_coordinate(copy, target_name=T.value_name(data.study))


def plotly_pareto(data: StudyData):
    names = [o.name for o in data.objectives]
    fig = optuna.visualization.plot_pareto_front(data.search_study(), target_names=names)
    three = len(names) == 3
    for k, t in enumerate(data.baselines):
        coords = dict(zip(("x", "y", "z"), ([v] for v in t.values), strict=False))
        label = T.baseline_name(t) or "?"
        trace = dict(  # named in the legend: labels on the plot would overlap
            **coords,
            mode="markers",
            name=ref_label(label),
            marker=_reference_marker(k),
        )
        fig.add_scatter3d(**trace) if three else fig.add_scatter(**trace)
    if data.chosen is not None and len(data.chosen.values or []) == len(names):
        coords = dict(zip(("x", "y", "z"), ([v] for v in data.chosen.values), strict=False))
        trace = dict(
            **coords,
            mode="markers",
            name=f"chosen: trial {data.chosen.number}",
            marker={
                "symbol": "star" if not three else "diamond-open",
                "size": 16,
                "color": "#f2b701",
                "line": {"width": 1, "color": "black"},
            },
        )
        fig.add_scatter3d(**trace) if three else fig.add_scatter(**trace)
    fig.update_layout(template="plotly_white", height=560, legend={"orientation": "h", "y": -0.18})
    return fig


def plotly_profile(profile: Profile):
    from plotly.subplots import make_subplots

    params = list(profile.panels)
    fig = make_subplots(rows=1, cols=len(params), subplot_titles=params)
    for col, param in enumerate(params, start=1):
        for k, (label, points) in enumerate(profile.panels[param].items()):
            fig.add_scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="lines+markers",
                name=f"{param} {label}" if label != param else param,
                line={"color": COLORS[k % len(COLORS)], "shape": "linear"},
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="layer", row=1, col=col, dtick=1)
    fig.update_layout(height=380, template="plotly_white")
    return fig
