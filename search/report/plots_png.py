"""The PNG versions of the report's figures, drawn with matplotlib from ``search.plots`` data.

``Figure`` objects are used directly (no pyplot): no global state, no display backend.
"""

from __future__ import annotations

import math
from pathlib import Path

from optuna.distributions import CategoricalDistribution

from mergesearch.search.optimize import trials as T
from mergesearch.search.report.plots import (
    COLORS,
    Importances,
    Pair,
    Profile,
    Series,
    StudyData,
    ref_label,
)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def png_history(data: StudyData, series: list[Series], path: Path) -> None:
    fig = _figure(8, 2.8 * len(series) + 0.6)
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, s in zip(axes, series, strict=True):
        ax.scatter(s.x, s.y, s=16, color=COLORS[0], label="trial", zorder=3)
        ax.step(s.x, s.best, where="post", color=COLORS[1], label="best so far")
        if data.chosen is not None and data.chosen.number in s.x:
            i = s.x.index(data.chosen.number)
            ax.scatter(
                [s.x[i]],
                [s.y[i]],
                marker="*",
                s=180,
                color="#f2b701",
                edgecolors="black",
                zorder=4,
                label="chosen",
            )
        for k, (name, value) in enumerate(s.refs):  # named in the legend: no labels to overlap
            color = COLORS[(k + 2) % len(COLORS)]
            ax.axhline(value, linestyle="--", linewidth=1, color=color, label=ref_label(name))
        ax.set_title(f"{s.name} ({s.direction})", fontsize=10)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="outside right upper")
    axes[-1].set_xlabel("trial")
    fig.savefig(path)


def png_importances(table: Importances, path: Path) -> None:
    """One panel per method, over that method's trials and parameters."""
    methods = list(table)
    sizes = [max(len(v) for v in table[m].values()) * len(table[m]) for m in methods]
    fig = _figure(7, sum(0.35 * n + 0.9 for n in sizes) + 0.6)
    axes = fig.subplots(len(methods), 1, squeeze=False, height_ratios=[n + 2 for n in sizes])[:, 0]
    for ax, method in zip(axes, methods, strict=True):
        targets = table[method]
        params = list(next(iter(targets.values())))
        height = 0.8 / len(targets)
        for k, (target, values) in enumerate(targets.items()):
            ys = [i + k * height for i in range(len(params))]
            ax.barh(
                ys,
                [values.get(p, 0.0) for p in params],
                height=height,
                label=target,
                color=COLORS[k % len(COLORS)],
            )
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(params))], params, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(method, fontsize=10)
        if len(targets) > 1:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("importance (PED-ANOVA)")
    fig.savefig(path)


def png_parallel(data: StudyData, path: Path) -> None:
    """Each parameter scaled to [0, 1] (categorical ones by choice index), lines coloured by
    the target; the target is the last axis."""
    import matplotlib as mpl
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    trials = data.search
    params = sorted({p for t in trials for p in t.params})
    target_name = "weighted score" if data.multi else T.value_name(data.study)
    targets = [T.weighted(data.study, t) for t in trials]
    columns: list[list[float]] = []
    ticks: list[list[tuple[float, str]]] = []  # per axis: (position in [0, 1], label)
    for p in params:
        dist = next(t.distributions[p] for t in trials if p in t.distributions)
        if isinstance(dist, CategoricalDistribution):
            n = max(len(dist.choices) - 1, 1)
            columns.append(
                [dist.choices.index(t.params[p]) / n if p in t.params else math.nan for t in trials]
            )
            ticks.append([(i / n, str(c)) for i, c in enumerate(dist.choices)])
        else:
            columns.append([_scaled(t.params.get(p), dist.low, dist.high) for t in trials])
            ticks.append(_numeric_ticks(dist.low, dist.high))
    lo, hi = min(targets), max(targets)
    columns.append([_scaled(v, lo, hi) for v in targets])
    ticks.append(_numeric_ticks(lo, hi))
    fig = _figure(max(7, 1.2 * len(columns) + 1.5), 4.8)
    ax = fig.subplots()
    cmap = mpl.colormaps["viridis"]
    order = sorted(range(len(trials)), key=lambda i: targets[i])
    for i in order:
        ax.plot(
            range(len(columns)),
            [c[i] for c in columns],
            color=cmap(columns[-1][i]),
            alpha=0.8,
            linewidth=1.2,
        )
    ax.set_xticks(range(len(columns)), [*params, target_name], rotation=30, ha="right", fontsize=8)
    for x, axis_ticks in enumerate(ticks):  # each axis its own scale: ticks drawn on it
        ax.axvline(x, color="grey", linewidth=0.6, zorder=0)
        for y, text in axis_ticks:
            ax.plot([x - 0.04, x], [y, y], color="grey", linewidth=0.6)
            ax.annotate(text, (x - 0.06, y), ha="right", va="center", fontsize=6)
    ax.set_xlim(-0.6, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    bar = fig.colorbar(ScalarMappable(norm=Normalize(lo, hi), cmap=cmap), ax=ax, pad=0.02)
    bar.set_label(target_name, fontsize=8)
    ax.set_title(f"parallel coordinates ({len(trials)} trials)", fontsize=10)
    fig.savefig(path)


def _scaled(value: float | None, lo: float, hi: float) -> float:
    return math.nan if value is None else (value - lo) / ((hi - lo) or 1)


def _numeric_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Low, middle and high of an axis, at their places in [0, 1]."""
    if hi == lo:
        return [(0.0, f"{lo:.3g}")]
    return [(0.0, f"{lo:.3g}"), (0.5, f"{(lo + hi) / 2:.3g}"), (1.0, f"{hi:.3g}")]


def png_pairs(pairs: list[Pair], path: Path) -> None:
    """Objective against objective: search trials, the sources (named in the legend), the
    chosen trial."""
    import matplotlib.lines as mlines

    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig = _figure(4.2 * cols + 1.8, 3.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, pair in zip(axes, pairs, strict=False):
        ax.scatter([t[1] for t in pair.trials], [t[2] for t in pair.trials], s=16, color=COLORS[0])
        for k, (_, x, y) in enumerate(pair.refs):
            ax.scatter([x], [y], marker="D", s=40, color=COLORS[(k + 2) % len(COLORS)])
        if pair.chosen is not None:
            ax.scatter(
                [pair.chosen[1]],
                [pair.chosen[2]],
                marker="*",
                s=200,
                color="#f2b701",
                edgecolors="black",
                zorder=4,
            )
        ax.set_xlabel(pair.x)
        ax.set_ylabel(pair.y)
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    first = pairs[0]
    handles = [
        mlines.Line2D([], [], color=COLORS[0], marker="o", linestyle="", label="trial"),
        *[
            mlines.Line2D(
                [], [], color=COLORS[(k + 2) % len(COLORS)], marker="D", ls="", label=ref_label(n)
            )
            for k, (n, _, _) in enumerate(first.refs)
        ],
    ]
    if first.chosen is not None:
        handles.append(
            mlines.Line2D(
                [],
                [],
                color="#f2b701",
                marker="*",
                ls="",
                ms=12,
                label=f"chosen: trial {first.chosen[0]}",
            )
        )
    fig.legend(handles=handles, fontsize=8, loc="outside right upper")
    fig.savefig(path)


def png_pareto(data: StudyData, path: Path) -> None:
    names = [o.name for o in data.objectives][:2]
    front = {t.number for t in T.pareto_front(data.study)}
    fig = _figure(6, 5)
    ax = fig.subplots()
    rest = [t for t in data.search if t.number not in front]
    best = sorted((t for t in data.search if t.number in front), key=lambda t: t.values[0])
    ax.scatter(
        [t.values[0] for t in rest],
        [t.values[1] for t in rest],
        s=18,
        color="#9ecae1",
        label="trial",
    )
    ax.plot(
        [t.values[0] for t in best],
        [t.values[1] for t in best],
        "o-",
        color=COLORS[1],
        label="Pareto front",
    )
    for k, t in enumerate(data.baselines):  # named in the legend: no labels to overlap
        color = COLORS[(k + 2) % len(COLORS)]
        label = ref_label(T.baseline_name(t) or "?")
        ax.scatter([t.values[0]], [t.values[1]], marker="D", s=40, color=color, label=label)
    if data.chosen is not None:
        ax.scatter(
            [data.chosen.values[0]],
            [data.chosen.values[1]],
            marker="*",
            s=220,
            color="#f2b701",
            edgecolors="black",
            zorder=4,
            label=f"chosen: trial {data.chosen.number}",
        )
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside right upper")
    fig.savefig(path)


def png_profile(profile: Profile, title: str, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    params = list(profile.panels)
    fig = _figure(max(4.0 * len(params), 6), 3.6)
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, param in zip(axes, params, strict=True):
        for k, (label, points) in enumerate(profile.panels[param].items()):
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "o-",
                color=COLORS[k % len(COLORS)],
                label=label,
            )
        ax.set_title(param, fontsize=10)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
