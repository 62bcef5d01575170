"""The suite's tables, ``bench/RESULTS_efficacy.md`` and the regret plot.

Everything is read back from what the suite recorded (the families' manifests, the committed
reference file, the cached runs), so the results file can be rewritten by any subcommand. The
file's hand-written notes, below ``NOTES_MARK``, are kept as they are.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.efficacy import landscapes as L
from mergesearch.search.demo.family import load_demo_family

RESULTS = L.ROOT / "bench" / "RESULTS_efficacy.md"
PLOT = L.ROOT / "bench" / "search_efficacy.png"
NOTES_MARK = "<!-- notes below are hand-written; bench/search_efficacy.py keeps them -->"

INTRO = """\
# Search efficacy: landscapes, reference scores, regret

Written by `bench/search_efficacy.py` (see its docstring); numbers are mean greedy exact match
over a landscape's target tasks, **held-out** split (200 items per task), unless marked search.
Landscapes are demo families built on this machine (`bench/efficacy/landscapes.py`); a family is
deterministic for a seed, thread count and CPU, so another machine builds other landscapes and
needs its own references.

Commands:

```bash
python bench/search_efficacy.py build                 # every landscape, ~3-4 min each on 1 core
python bench/search_efficacy.py grid NAME             # hand-set merges of one landscape
python bench/search_efficacy.py reference             # long search per landscape -> reference.json
python bench/search_efficacy.py run                   # strategies x budgets x seeds -> regret
```
"""


# --------------------------------------------------------------------------- landscapes


def landscape_rows(chosen: list[L.Landscape]) -> list[dict[str, Any]]:
    """Base, specialists and average (held-out mean) of each built landscape."""
    rows = []
    for landscape in chosen:
        family = load_demo_family(landscape.root, landscape.recipe, landscape.seed)
        if family is None or not family.table:
            continue
        table = {row["model"]: row for row in family.table}
        specialists = {t: table[f"specialist {t}"]["mean"] for t in landscape.targets}
        rows.append(
            {
                "name": landscape.name,
                "targets": "/".join(landscape.targets),
                "seed": landscape.seed,
                "threads": landscape.threads,
                "base": table["base"]["mean"],
                "specialists": specialists,
                "best_specialist": max(specialists.values()),
                "average": next(r["mean"] for k, r in table.items() if k.endswith("average")),
                "build_seconds": family.build_seconds,
                "note": landscape.note,
            }
        )
    return rows


def render_landscapes(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| landscape | targets | seed | threads | base | specialists | best specialist | "
        "50/50 average | build s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        specs = " / ".join(f"{v:.3f}" for v in r["specialists"].values())
        lines.append(
            f"| {r['name']} | {r['targets']} | {r['seed']} | {r['threads']} | {r['base']:.3f} | "
            f"{specs} | {r['best_specialist']:.3f} | {r['average']:.3f} | "
            f"{r['build_seconds']:.0f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- references


def render_references(references: dict[str, Any]) -> str:
    lines = [
        "| landscape | reference | method | search | vs best specialist | vs 50/50 average | "
        "trials | s | CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ref in references.items():
        best = ref["best_specialist"]["heldout"]
        lines.append(
            f"| {name} | **{ref['reference']:.3f}** | {ref['method']} | {ref['search']:.3f} | "
            f"{ref['reference'] - best:+.3f} | {ref['reference'] - ref['average_heldout']:+.3f} | "
            f"{ref['trials']} | {ref['seconds']:.0f} | {ref['family'].get('cpu', '?')} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- regret


def regret_rows(runs: list[dict[str, Any]], references: dict[str, Any]) -> list[dict[str, Any]]:
    """Per strategy and budget: regret over landscapes x seeds (median, worst, mean) and
    items spent. A run that chose no merge counts as regret = the reference."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["landscape"] in references:
            groups[(run["strategy"], run["budget"])].append(run)
    rows = []
    for (strategy, budget), group in sorted(groups.items()):
        regrets = [regret(run, references) for run in group]
        items = [_items(run) for run in group]
        rows.append(
            {
                "strategy": strategy,
                "budget": budget,
                "runs": len(group),
                "median": statistics.median(regrets),
                "worst": max(regrets),
                "mean": statistics.fmean(regrets),
                "items": statistics.median(items),
                "items_estimated": any(run.get("items") is None for run in group),
            }
        )
    return rows


def regret(run: dict[str, Any], references: dict[str, Any]) -> float:
    reference = references[run["landscape"]]["reference"]
    return reference - (run["heldout"] if run["heldout"] is not None else 0.0)


def _items(run: dict[str, Any]) -> int:
    return run["items"] if run.get("items") is not None else run["items_estimated"]


def render_regret(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | budget (trials) | runs | median regret | worst regret | mean regret | "
        "median items |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        items = f"{r['items']:.0f}" + (" (est.)" if r["items_estimated"] else "")
        lines.append(
            f"| {r['strategy']} | {r['budget']} | {r['runs']} | {r['median']:+.3f} | "
            f"{r['worst']:+.3f} | {r['mean']:+.3f} | {items} |"
        )
    return "\n".join(lines)


def plot_regret(runs: list[dict[str, Any]], references: dict[str, Any], path: Path) -> None:
    """Regret of every run against the items it spent, one colour per strategy, with each
    strategy's median per budget joined by a line; hollow markers: items estimated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["landscape"] in references:
            by_strategy[run["strategy"]].append(run)
    for i, (strategy, group) in enumerate(sorted(by_strategy.items())):
        color = f"C{i}"
        for run in group:
            estimated = run.get("items") is None
            ax.scatter(
                _items(run),
                regret(run, references),
                s=14,
                alpha=0.5,
                edgecolors=color,
                facecolors="none" if estimated else color,
            )
        medians = []
        for budget in sorted({run["budget"] for run in group}):
            at = [run for run in group if run["budget"] == budget]
            medians.append(
                (
                    statistics.median(_items(run) for run in at),
                    statistics.median(regret(run, references) for run in at),
                )
            )
        xs, ys = zip(*medians, strict=True)
        ax.plot(xs, ys, "-o", color=color, label=f"{strategy} (median per budget)")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("evaluated items spent by the search (hollow: estimated from trials)")
    ax.set_ylabel("regret (reference - held-out of chosen merge)")
    ax.set_title("Search efficacy: regret against items spent")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the file


def write_results(
    reference_json: Path, runs_json: Path, *, runs: list[dict[str, Any]] | None = None
) -> None:
    """Rewrite ``bench/RESULTS_efficacy.md`` from what is recorded; keep the hand-written notes.

    ``runs`` restricts the regret section (default: every cached run)."""
    references = current_references(_read(reference_json))
    if runs is None:
        runs = list(_read(runs_json).values())
    parts = [INTRO]
    rows = landscape_rows(list(L.LANDSCAPES))
    if rows:
        parts += ["## Landscapes", "", render_landscapes(rows), ""]
    if references:
        parts += [
            "## Reference scores",
            "",
            "Per landscape one long search (bench/search_efficacy.py `REFERENCE_SAMPLER`, "
            "all the suite's methods); reference = held-out score of the merge it chose on the "
            "search split. Recorded in `bench/efficacy/reference.json`.",
            "",
            render_references(references),
            "",
        ]
    if runs and references:
        plot_regret(runs, references, PLOT)
        parts += [
            "## Regret",
            "",
            "regret = reference - held-out score of the merge chosen on the search split; "
            "budgets count every trial, baselines included.",
            "",
            render_regret(regret_rows(runs, references)),
            "",
            f"![regret against items spent]({PLOT.name})",
            "",
        ]
    notes = ""
    if RESULTS.is_file() and NOTES_MARK in RESULTS.read_text():
        notes = RESULTS.read_text().split(NOTES_MARK, 1)[1]
    RESULTS.write_text("\n".join(parts) + "\n" + NOTES_MARK + (notes or "\n"))


def current_references(references: dict[str, Any]) -> dict[str, Any]:
    """The references recorded on the weights built here (another CPU trains other families,
    and their references say nothing of these)."""
    by_name = {landscape.name: landscape for landscape in L.LANDSCAPES}
    return {
        name: ref
        for name, ref in references.items()
        if name in by_name
        and L.is_built(by_name[name])
        and ref.get("family", {}).get("weights") == L.weights_digest(by_name[name])
    }


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
