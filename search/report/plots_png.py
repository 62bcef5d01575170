"""The PNG versions of the report's figures, drawn with matplotlib from ``search.plots`` data.

``Figure`` objects are used directly (no pyplot): no global state, no display backend.
"""

from __future__ import annotations

import math
from pathlib import Path

from optuna.distributions import CategoricalDistribution

from mergesearch.search.optimize import trials as T
from mergesearch.search.report.plots import COLORS, Profile, Series, StudyData


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
        for k, (name, value) in enumerate(s.refs):
            color = COLORS[(k + 2) % len(COLORS)]
            ax.axhline(value, linestyle="--", linewidth=1, color=color)
            ax.annotate(
                f"source: {name}" if name != "average" else "average of sources",
                (0.005, value),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color=color,
                va="bottom",
            )
        ax.set_title(f"{s.name} ({s.direction})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[-1].set_xlabel("trial")
    fig.savefig(path)


def png_importances(table: dict[str, dict[str, float]], path: Path) -> None:
    params = list(next(iter(table.values())))
    fig = _figure(7, 0.35 * len(params) * len(table) + 1.5)
    ax = fig.subplots()
    height = 0.8 / len(table)
    for k, (target, values) in enumerate(table.items()):
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
    ax.set_xlabel("importance (PED-ANOVA)")
    if len(table) > 1:
        ax.legend(fontsize=8)
    fig.savefig(path)


def png_parallel(data: StudyData, path: Path) -> None:
    """Each parameter scaled to [0, 1] (categorical ones by choice index), lines coloured by
    the target; the target is the last axis."""
    import matplotlib as mpl

    trials = data.search
    params = sorted({p for t in trials for p in t.params})
    target_name = "weighted score" if data.multi else T.value_name(data.study)
    targets = [T.weighted(data.study, t) for t in trials]
    columns, ticks = [], []
    for p in params:
        dist = next(t.distributions[p] for t in trials if p in t.distributions)
        if isinstance(dist, CategoricalDistribution):
            n = max(len(dist.choices) - 1, 1)
            columns.append(
                [dist.choices.index(t.params[p]) / n if p in t.params else math.nan for t in trials]
            )
            ticks.append(", ".join(map(str, dist.choices)))
        else:
            lo, hi = dist.low, dist.high
            columns.append(
                [
                    (t.params[p] - lo) / ((hi - lo) or 1) if p in t.params else math.nan
                    for t in trials
                ]
            )
            ticks.append(f"{lo:g}..{hi:g}")
    lo, hi = min(targets), max(targets)
    columns.append([(v - lo) / ((hi - lo) or 1) for v in targets])
    ticks.append(f"{lo:.3g}..{hi:.3g}")
    fig = _figure(max(7, 1.1 * len(columns)), 4.5)
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
    for x, text in enumerate(ticks):
        ax.axvline(x, color="grey", linewidth=0.6)
        ax.annotate(text, (x, 1.02), ha="center", fontsize=6, annotation_clip=False)
    ax.set_ylim(-0.05, 1.08)
    ax.set_yticks([])
    ax.set_title(
        f"parallel coordinates ({len(trials)} trials, colour = {target_name})", fontsize=10, pad=14
    )
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
    for k, t in enumerate(data.baselines):
        color = COLORS[(k + 2) % len(COLORS)]
        ax.scatter([t.values[0]], [t.values[1]], marker="D", s=40, color=color)
        ax.annotate(
            f"source: {T.baseline_name(t)}",
            (t.values[0], t.values[1]),
            fontsize=7,
            color=color,
            xytext=(4, 4),
            textcoords="offset points",
        )
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
    ax.legend(fontsize=8)
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
