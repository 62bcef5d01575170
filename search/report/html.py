"""``report.html`` and PNGs of a study: what the search did, and what it found.

One self-contained HTML file that renders offline: plotly.js is embedded once in the head and
every figure is a ``<div>`` plus a short script (a full ``write_html`` per figure would repeat
the multi-megabyte library). The PNGs (matplotlib) go to ``plots/`` next to it. Both files are written
aside and renamed into place, so a reader never opens half a report.
"""

from __future__ import annotations

import datetime
import difflib
import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from mergesearch.merging.atomic import atomic_path, atomic_write_text
from mergesearch.search import attrs as A
from mergesearch.search.distributed.locate import StudyLocation
from mergesearch.search.distributed.urls import hide_password, hide_passwords
from mergesearch.search.optimize import trials as T
from mergesearch.search.optimize import versions
from mergesearch.search.optimize.summary import STATE_NAMES, describe_params, summarize
from mergesearch.search.report import plots, plots_png

REPORT_NAME = "report.html"
PLOTS_DIR = "plots"
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
PNG_NAMES = (
    "history.png",
    "importances.png",
    "parallel_coordinates.png",
    "objectives.png",
    "pareto_front.png",
    "best_profile.png",
)


@dataclass
class ReportResult:
    html: Path
    pngs: list[Path] = field(default_factory=list)
    chosen: FrozenTrial | None = None
    bytes: int = 0


def write_report(
    study: optuna.Study,
    location: StudyLocation,
    out_dir: Path | None = None,
    *,
    top: int = 10,
    pick: str = "weighted",
) -> ReportResult:
    """Write ``report.html`` and ``plots/*.png`` into ``out_dir`` (default: the results folder)."""
    out_dir = Path(out_dir or location.results_dir)
    (out_dir / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    chosen, why = (None, "no completed search trial yet")
    if T.search_trials(study):
        chosen, why = T.pick_trial(study, pick=pick)
    data = plots.prepare(study, chosen)
    result = ReportResult(out_dir / REPORT_NAME, chosen=chosen)

    sections: list[str] = []
    series = plots.history(data)
    has_points = any(s.x for s in series)
    sections.append(
        _figure_section(
            "history",
            "Optimisation history",
            "Each search trial's score, the best so far, and where each source model alone "
            "(and their plain average) scores: dashed lines.",
            plots.plotly_history(data, series) if has_points else None,
            "no completed search trial yet",
        )
    )
    if has_points:
        result.pngs.append(_png(out_dir, "history.png", plots_png.png_history, data, series))

    table, reason = plots.importances(data)
    sections.append(
        _figure_section(
            "importances",
            "Parameter importances, per method",
            "How much of the score's variation each parameter explains among one method's "
            "trials, over the parameters that method reads (a method ignores the others). "
            "Which method wins is in the table below.",
            plots.plotly_importances(table) if table else None,
            reason,
            extra=_methods_table(plots.method_stats(data)),
        )
    )
    if table:
        result.pngs.append(_png(out_dir, "importances.png", plots_png.png_importances, table))

    enough = len(data.search) >= 2 and any(t.params for t in data.search)
    sections.append(
        _figure_section(
            "parallel",
            "Parallel coordinates",
            "Every search trial as one line through its parameters, coloured by its score.",
            plots.plotly_parallel(data) if enough else None,
            "needs at least 2 completed search trials with parameters",
        )
    )
    if enough:
        result.pngs.append(_png(out_dir, "parallel_coordinates.png", plots_png.png_parallel, data))

    if len(data.objectives) >= 2:
        pairs = plots.objective_pairs(data)
        drawn = any(p.trials for p in pairs)
        sections.append(
            _figure_section(
                "objectives",
                "Objective against objective",
                "Each search trial's score on one objective against another (search split); "
                "the sources and their average as diamonds, the chosen trial as a star.",
                plots.plotly_pairs(pairs) if drawn else None,
                "no completed search trial with scores on both objectives",
            )
        )
        if drawn:
            result.pngs.append(_png(out_dir, "objectives.png", plots_png.png_pairs, pairs))

    if data.multi:
        drawable = len(data.objectives) in (2, 3) and data.search
        sections.append(
            _figure_section(
                "pareto",
                "Pareto front",
                "Trials no other trial beats on every objective; the sources for reference.",
                plots.plotly_pareto(data) if drawable else None,
                "drawn for 2 or 3 objectives with completed trials",
            )
        )
        if drawable and len(data.objectives) == 2:
            result.pngs.append(_png(out_dir, "pareto_front.png", plots_png.png_pareto, data))

    profile = plots.layer_profile(data)
    if chosen is not None:
        title = f"trial {chosen.number} ({T.method_of(chosen)}): parameters per layer"
        sections.append(
            _figure_section(
                "profile",
                "Per-layer parameters of the chosen trial",
                "The values the merge engine uses at each layer (gradients interpolated), one "
                "line per model and tensor filter (rest: tensors no filter matches).",
                plots.plotly_profile(profile) if profile and profile.panels else None,
                profile.note if profile else "no chosen trial",
            )
        )
        if profile and profile.panels:
            result.pngs.append(
                _png(out_dir, "best_profile.png", plots_png.png_profile, profile, title)
            )

    for name in set(PNG_NAMES) - {p.name for p in result.pngs}:  # left by an earlier report
        (out_dir / PLOTS_DIR / name).unlink(missing_ok=True)
    page = _page(study, location, chosen, why, sections, _top_table(study, top), result.pngs)
    result.bytes = atomic_write_text(result.html, page)
    return result


# ------------------------------------------------------------------------------ pieces


def _png(out_dir: Path, name: str, draw, *args) -> Path:
    path = out_dir / PLOTS_DIR / name
    with atomic_path(path) as tmp:
        draw(*args, tmp)
    return path


def _figure_section(
    key: str, title: str, blurb: str, fig, missing: str | None, extra: str = ""
) -> str:
    if fig is None:
        body = f'<p class="missing">Not drawn: {html.escape(missing or "no data")}.</p>'
    else:
        body = fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"plot-{key}", config=PLOTLY_CONFIG
        )
    return (
        f'<section id="{key}"><h2>{html.escape(title)}</h2>'
        f"<p>{html.escape(blurb)}</p>{extra}{body}</section>"
    )


def _methods_table(stats: list[plots.MethodStats]) -> str:
    if not stats:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(s.method)}</td><td>{s.trials}</td><td>{_num(s.best)}</td>"
        f"<td>{_num(s.mean)}</td></tr>"
        for s in stats
    )
    return (
        '<table id="methods"><thead><tr><th>method</th><th>search trials</th>'
        f"<th>best weighted</th><th>mean weighted</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _num(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return "–"


def _scores_cells(study: optuna.Study, trial: FrozenTrial, names: list[str], split: str | None):
    s = T.scores(study, trial)
    cells = [_num(s.get("search", {}).get(n)) for n in names]
    if split:
        cells += [_num(s.get(split, {}).get(n)) for n in names]
    return cells


def _top_table(study: optuna.Study, top: int) -> str:
    names = [o.name for o in T.objectives(study)]
    split = T.heldout_split(study)
    ranked = sorted(T.search_trials(study), key=T.rank_key(study))[:top]
    value_head = "weighted" if len(names) > 1 else T.value_name(study)
    used = study.user_attrs.get(A.METHOD_PARAMS)  # a row shows what its method reads, only
    head = ["rank", "trial", "method", "parameters", value_head]
    head += [f"{n} (search)" for n in names]
    if split:
        head += [f"{n} ({split})" for n in names]
    head += ["merge s", "eval s"]
    rows = []
    for rank, t in enumerate(ranked, start=1):
        rows.append(
            [
                str(rank),
                f"#{t.number}",
                T.method_of(t),
                describe_params(t, used),
                _num(T.weighted(study, t)),
                *_scores_cells(study, t, names, split),
                _num(t.user_attrs.get(A.MERGE_SECONDS)),
                _num(t.user_attrs.get(A.EVAL_SECONDS)),
            ]
        )
    for t in T.baselines(study):
        rows.append(
            [
                "source" if T.baseline_name(t) != "average" else "average",
                f"#{t.number}",
                T.method_of(t),
                "the source model alone"
                if T.baseline_name(t) != "average"
                else "uniform average of the sources",
                _num(T.weighted(study, t)),
                *_scores_cells(study, t, names, split),
                _num(t.user_attrs.get(A.MERGE_SECONDS)),
                _num(t.user_attrs.get(A.EVAL_SECONDS)),
            ]
        )
    if not rows:
        return '<p class="missing">No completed trial yet.</p>'
    out = ['<table id="top-trials"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for cells in rows:
        kind = "baseline" if cells[0] in ("source", "average") else "trial"
        out.append(f'<tr class="{kind}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells))
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _trial_counts(study: optuna.Study) -> tuple[int, str]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(STATE_NAMES.get(t.state, t.state.name.lower()) for t in trials)
    baselines = sum(1 for t in trials if T.baseline_name(t))
    parts = [f"{n} {state}" for state, n in counts.most_common()]
    text = f"{len(trials)} trials ({', '.join(parts)}; {baselines} of them baselines)"
    return len(trials), text


def _chosen_block(study: optuna.Study, chosen: FrozenTrial | None, why: str) -> str:
    if chosen is None:
        return f'<p class="missing">{html.escape(why)}.</p>'
    names = [o.name for o in T.objectives(study)]
    split = T.heldout_split(study)
    cells = _scores_cells(study, chosen, names, split)
    head = [f"{n} (search)" for n in names] + ([f"{n} ({split})" for n in names] if split else [])
    table = (
        '<table class="scores"><tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr><tr>"
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr></table>"
    )
    config = chosen.user_attrs.get(A.MERGE_CONFIG, "")
    gains = "".join(f"<li>{html.escape(line)}</li>" for line in _gain_lines(study, chosen))
    return (
        f'<p id="chosen">Trial <b>#{chosen.number}</b> ({html.escape(T.method_of(chosen))}): '
        f"{html.escape(why)}. Export it with <code>mergesearch export</code>.</p>{table}"
        + (f'<ul id="gains">{gains}</ul>' if gains else "")
        + f"<h3>Merge config</h3><pre>{html.escape(config)}</pre>"
        + _config_diff(study, chosen)
    )


def _gain_lines(study: optuna.Study, chosen: FrozenTrial) -> list[str]:
    """The chosen trial's held-out gain over the best source and the average, each with its
    paired standard error (``optimize.significance``)."""
    summary = summarize(study)
    row = next((r for r in summary.rows if r.number == chosen.number), None)
    return summary.gain_lines(row=row) if row is not None else []


def _config_diff(study: optuna.Study, chosen: FrozenTrial) -> str:
    """The chosen config against the average baseline's, line by line (what the search
    changed from the obvious merge)."""
    average = next((t for t in T.baselines(study) if T.baseline_name(t) == "average"), None)
    ours = chosen.user_attrs.get(A.MERGE_CONFIG, "")
    if average is None or not ours or average.number == chosen.number:
        return ""
    theirs = average.user_attrs.get(A.MERGE_CONFIG, "")
    lines = []
    for line in difflib.unified_diff(
        theirs.splitlines(),
        ours.splitlines(),
        fromfile=f"average of the sources (trial {average.number})",
        tofile=f"trial {chosen.number}",
        lineterm="",
    ):
        kind = "add" if line.startswith("+") else "del" if line.startswith("-") else "ctx"
        lines.append(f'<span class="{kind}">{html.escape(line)}</span>')
    return (
        "<h3>Against the average of the sources</h3>"
        f'<pre id="config-diff">{chr(10).join(lines)}</pre>'
    )


def _spec_versions(study: optuna.Study, chosen: FrozenTrial | None) -> str:
    """Each spec the study's trials ran under, with the trials it covers."""
    history = versions.versions(study)
    if not any(v.spec for v in history):
        return ""
    blocks = []
    for i, version in enumerate(history):
        last = history[i + 1].first_trial - 1 if i + 1 < len(history) else len(study.trials) - 1
        ran = f"trials {version.first_trial}–{last}" if last >= version.first_trial else "no trial"
        mark = ""
        if chosen is not None and versions.version_of(chosen) == version.number:
            mark = ", the chosen trial's"
        title = (
            f"Search spec, version {version.number} ({ran}{mark})"
            if len(history) > 1
            else "Search spec"
        )
        spec = hide_passwords(version.spec)  # a study made before the rule
        opened = " open" if i == len(history) - 1 and len(history) > 1 else ""
        blocks.append(
            f'<details class="spec"{opened}><summary>{html.escape(title)}</summary>'
            f"<pre>{html.escape(spec)}</pre></details>"
        )
    note = ""
    if len(history) > 1:
        note = (
            "<p>The objectives or sources changed during the study (resumed with "
            "<code>--allow-spec-change</code>); tables and plots show the trials of the last "
            "version only, as scores of different versions are not comparable.</p>"
        )
    return f'<section id="spec">{note}{"".join(blocks)}</section>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} section{margin:2em 0} pre{background:#f5f5f5;padding:1em;overflow:auto}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
td:nth-child(3),td:nth-child(4),th{text-align:left}
tr.baseline{background:#f3f7fb;font-style:italic} .missing{color:#888}
#config-diff .add{color:#116329;background:#e6ffec} #config-diff .del{color:#82071e;background:#ffebe9}
#config-diff span{display:block}
.facts td{text-align:left;border:none;padding:.1em 1em .1em 0}
"""


def _page(
    study: optuna.Study,
    location: StudyLocation,
    chosen: FrozenTrial | None,
    why: str,
    sections: list[str],
    table: str,
    pngs: list[Path],
) -> str:
    from plotly.offline import get_plotlyjs

    count, counts_text = _trial_counts(study)
    infos = T.objectives(study)
    objectives = ", ".join(f"{o.name} ({o.direction}, weight {o.weight:g})" for o in infos)
    combine = study.user_attrs.get(A.COMBINE) or (
        "pareto" if T.is_multi_objective(study) else "single value"
    )
    facts = [
        ("storage", hide_password(location.storage_url)),
        ("objectives", objectives),
        ("combined as", combine),
        ("generated", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]
    facts_html = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts
    )
    spec_html = _spec_versions(study, chosen)
    links = ", ".join(f'<a href="{PLOTS_DIR}/{p.name}">{p.name}</a>' for p in pngs) or "none"
    title = f"mergesearch report: {study.study_name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p id="trial-count" data-trials="{count}">{html.escape(counts_text)}</p>
<table class="facts">{facts_html}</table>
<section id="best"><h2>Chosen trial</h2>{_chosen_block(study, chosen, why)}</section>
{"".join(sections)}
<section id="top"><h2>Top trials and the sources</h2>{table}</section>
{spec_html}
<p class="missing">PNG versions: {links}</p>
</body></html>
"""
