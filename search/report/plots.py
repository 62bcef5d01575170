"""The report's figures: the data is prepared once (here), then drawn twice.

Plotly draws the interactive figures of ``report.html`` (here); matplotlib draws the PNGs
(``search.plots_png``: plotly's PNG export needs kaleido, which downloads a browser). Parallel coordinates and the Pareto front in
the HTML are Optuna's own plotly figures, drawn on a copy of the study without baselines and
answered duplicates (baselines suggest no parameters and would empty the search space).

Figures: optimisation history (sources as reference lines), parameter importances, parallel
coordinates, Pareto front (multi-objective), per-layer parameter profile of the chosen trial.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

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


def importances(data: StudyData) -> tuple[dict[str, dict[str, float]], str | None]:
    """``{target: {param: importance}}``, or an empty dict and the reason."""
    if len(data.search) < 3:
        return {}, f"needs at least 3 completed search trials, the study has {len(data.search)}"
    copy = data.search_study()
    targets = (
        [(o.name, _value(i)) for i, o in enumerate(data.objectives)]
        if data.multi
        else [(T.value_name(data.study), None)]
    )
    out = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, target in targets:
                out[name] = optuna.importance.get_param_importances(
                    copy, evaluator=PedAnovaImportanceEvaluator(), target=target
                )
    except (RuntimeError, ValueError) as err:
        return {}, f"cannot be computed here ({err})"
    if not any(out.values()):
        return {}, "no parameter varies between the search trials"
    return out, None


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
    per_layer: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for job in plan.jobs:
        out = parse_layer_name(job.out_name)
        if out is None:
            continue
        layer = out.index
        if plan.method.stacks_layers:  # no parameters: show where each layer comes from
            for ref in job.inputs:
                source = parse_layer_name(ref.name)
                if source is not None:
                    per_layer[("source layer", data.label(ref.model))][layer].append(source.index)
            continue
        for ref, values in zip(job.inputs, job.per_model, strict=True):
            for param, value in values.items():
                if _is_number(value):
                    per_layer[(param, data.label(ref.model))][layer].append(float(value))
        for param, value in job.params.items():
            if _is_number(value):
                per_layer[(param, "")][layer].append(float(value))
    panels: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for (param, label), layers in sorted(per_layer.items()):
        panels[param][label or param] = [(k, sum(v) / len(v)) for k, v in sorted(layers.items())]
    if not panels:
        return Profile(plan.method.name, {}, "the merge has no per-layer numeric parameters")
    return Profile(plan.method.name, dict(panels))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------ plotly


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
            mode="markers",
            name="trial",
            legendgroup="trial",
            showlegend=first,
            marker={"color": COLORS[0], "size": 7},
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
        for k, (name, value) in enumerate(s.refs):
            fig.add_hline(
                y=value,
                line_dash="dash",
                line_color=COLORS[(k + 2) % len(COLORS)],
                annotation_text=f"source: {name}" if name != "average" else "average of sources",
                annotation_position="top left",
                row=row,
                col=1,
            )
    fig.update_xaxes(title_text="trial", row=len(series), col=1)
    fig.update_layout(height=320 * len(series) + 80, margin={"t": 60}, template="plotly_white")
    return fig


def plotly_importances(table: dict[str, dict[str, float]]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, (target, values) in enumerate(table.items()):
        names = list(reversed(list(values)))
        fig.add_bar(
            x=[values[n] for n in names],
            y=names,
            orientation="h",
            name=target,
            marker_color=COLORS[k % len(COLORS)],
        )
    fig.update_layout(
        barmode="group",
        xaxis_title="importance (PED-ANOVA)",
        template="plotly_white",
        height=max(300, 26 * max(len(v) for v in table.values()) * len(table) + 120),
    )
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
        label = T.baseline_name(t)
        trace = dict(
            **coords,
            mode="markers+text",
            text=[label],
            name=f"source: {label}",
            textposition="top center",
            marker={"symbol": "diamond", "size": 11, "color": COLORS[(k + 2) % len(COLORS)]},
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
