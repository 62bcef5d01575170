"""The suite's tables, ``bench/RESULTS_efficacy.md`` and the regret plot.

Everything is read back from what the suite recorded (the families' manifests, the committed
reference file, the cached runs), so the results file can be rewritten by any subcommand. The
file's hand-written notes, below ``NOTES_MARK``, are kept as they are.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.efficacy import landscapes as L
from mergesearch.search.demo.family import load_demo_family
from mergesearch.search.optimize.significance import SIGNIFICANT_AT

RESULTS = L.ROOT / "bench" / "RESULTS_efficacy.md"
PLOTS = L.ROOT / "bench"  # search_efficacy-<cpu>.png, one plot per CPU with runs
NOTES_MARK = "<!-- notes below are hand-written; bench/search_efficacy.py keeps them -->"
WORST_TARGET = 0.03  # the worst regret at 60 trials
MF_SUFFIX = "+mf"  # `<strategy>+mf`: that strategy searched with the staged pruner
# `<strategy>+mf+cap` at a budget of B trials: also stopped once it has spent the items of B / 2
# unpruned trials (the spec's `budget: {items: ...}`), the item cost of `<strategy>` at B / 2
CAP_SUFFIX = "+cap"


def unpruned(strategy: str) -> str:
    """The strategy without its pruner and item cap: what ``<s>+mf`` and ``<s>+mf+cap`` are
    compared with."""
    return strategy.removesuffix(CAP_SUFFIX).removesuffix(MF_SUFFIX)


INTRO = """\
# Search efficacy: landscapes, reference scores, regret

Written by `bench/search_efficacy.py` (see its docstring); numbers are mean greedy exact match
over a landscape's target tasks, **held-out** split (200 items per task), unless marked search.
Landscapes are demo families built on this machine (`bench/efficacy/landscapes.py`); a family is
deterministic for a seed, thread count and CPU, so another machine builds other landscapes and
needs its own references. References and runs are kept by the digest of the weights they were
recorded on, and each CPU's records form their own section below: they are never pooled.

Commands:

```bash
python bench/search_efficacy.py build                 # every landscape, ~3-4 min each on 1 core
python bench/search_efficacy.py grid NAME             # hand-set merges of one landscape
python bench/search_efficacy.py reference             # long search per landscape -> reference.json
python bench/search_efficacy.py run                   # strategies x budgets x seeds -> regret
python bench/search_efficacy.py rescore               # standard errors of older records
```

A regret's standard error is paired by held-out item: the chosen merge and the reference merge
answer the same items, so what counts is on how many items they differ (`bench/efficacy/paired.py`).
"Behind at 2 s.e.": runs whose regret is at least two standard errors; "over 0.03 at 2 s.e.":
runs over the worst-regret target by as much. Strategy against strategy is paired by landscape,
budget and seed, its standard error from the spread of those differences.
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


def markdown_table(header: list[str], rows: list[list[str]], *, with_header: bool = True) -> str:
    """A GitHub table: the one layout every section of the results file uses."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] if with_header else []
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _family_cells(r: dict[str, Any]) -> list[str]:
    """Seed, threads, base and specialists: the columns every table of families shares."""
    specialists = " / ".join(f"{v:.3f}" for v in r["specialists"].values())
    return [str(r["seed"]), str(r["threads"]), f"{r['base']:.3f}", specialists]


def render_landscapes(rows: list[dict[str, Any]]) -> str:
    header = ["landscape", "targets", "seed", "threads", "base", "specialists"]
    header += ["best specialist", "50/50 average", "build s"]
    return markdown_table(
        header,
        [
            [
                r["name"],
                r["targets"],
                *_family_cells(r),
                f"{r['best_specialist']:.3f}",
                f"{r['average']:.3f}",
                f"{r['build_seconds']:.0f}",
            ]
            for r in rows
        ],
    )


# --------------------------------------------------------------------------- references


def render_references(references: dict[str, Any]) -> str:
    header = ["landscape", "reference", "method", "search", "vs best specialist"]
    header += ["vs 50/50 average", "trials", "s", "CPU"]
    return markdown_table(
        header,
        [
            [
                ref["landscape"],
                f"**{ref['reference']:.3f}**",
                ref["method"],
                f"{ref['search']:.3f}",
                f"{ref['reference'] - ref['best_specialist']['heldout']:+.3f}",
                f"{ref['reference'] - ref['average_heldout']:+.3f}",
                str(ref["trials"]),
                f"{ref['seconds']:.0f}",
                ref["family"].get("cpu", "?"),
            ]
            for ref in references.values()
        ],
    )


# --------------------------------------------------------------------------- regret


def regret_rows(runs: list[dict[str, Any]], references: dict[str, Any]) -> list[dict[str, Any]]:
    """Per strategy and budget: regret over landscapes x seeds (median, worst, mean) and
    items spent. A run that chose no merge counts as regret = the reference. ``references``
    are keyed by :func:`weights_key`: a run is judged against the reference of its weights.

    Where runs kept their regret's paired standard error: its median, how many runs are behind
    the reference by two standard errors or more, and how many are over ``WORST_TARGET`` by as
    much (a regret over the target by less is not told apart from meeting it)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if _run_reference(run, references) is not None:
            groups[(run["strategy"], run["budget"])].append(run)
    rows = []
    for (strategy, budget), group in sorted(groups.items()):
        regrets = [regret(run, references) for run in group]
        items = [_items(run) for run in group]
        judged = [(r, run.get("regret_stderr")) for r, run in zip(regrets, group, strict=True)]
        judged = [(r, se) for r, se in judged if se is not None]
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
                "judged": len(judged),
                "stderr": statistics.median(se for _, se in judged) if judged else None,
                "behind": sum(r > 0 and r >= SIGNIFICANT_AT * se for r, se in judged),
                "over_target": sum(r - SIGNIFICANT_AT * se > WORST_TARGET for r, se in judged),
            }
        )
    return rows


def paired_differences(
    runs: list[dict[str, Any]], references: dict[str, Any], against: str = "random"
) -> list[dict[str, Any]]:
    """Each strategy's regret minus ``against``'s on the same landscape, budget and seed: the
    mean difference over those pairs and its standard error (the spread of the differences
    over the square root of their number). The issue's "mean regret 0.03 below random" is a
    mean difference of -0.03, told apart from zero only where it is two standard errors out."""
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for mine, theirs in _pairs(runs, references):
        if theirs["strategy"] == against:
            groups[(mine["strategy"], mine["budget"])].append(mine["regret"] - theirs["regret"])
    return [
        {"strategy": strategy, "against": against, "budget": budget, **_mean_and_error(diffs)}
        for (strategy, budget), diffs in sorted(groups.items())
    ]


def multi_fidelity_rows(runs: list[dict[str, Any]], references: dict[str, Any]) -> list[dict]:
    """Each multi-fidelity strategy ``<s>+mf`` (and ``<s>+mf+cap``) against ``<s>`` without the
    pruner at the same budget and at half its budget, on the same landscapes and seeds: the
    items it spent as a share of the other's (median over pairs) and the mean regret difference.
    The same budget asks what the pruner costs in regret; half the budget (the pruner spends
    about half the items; the cap makes that exact), what the items it saved buy."""
    groups: dict[tuple[str, int, str, int], list[tuple[float, float]]] = defaultdict(list)
    for mine, theirs in _pairs(runs, references, same_budget=False):
        compared = mine["budget"] in (theirs["budget"], 2 * theirs["budget"])
        pruned = mine["strategy"] != theirs["strategy"] == unpruned(mine["strategy"])
        if compared and pruned and theirs["items"]:
            key = (mine["strategy"], mine["budget"], theirs["strategy"], theirs["budget"])
            share = mine["items"] / theirs["items"]
            groups[key].append((share, mine["regret"] - theirs["regret"]))
    return [
        {
            "strategy": strategy,
            "budget": budget,
            "against": against,
            "against_budget": against_budget,
            "items_share": statistics.median(share for share, _ in pairs),
            **_mean_and_error([diff for _, diff in pairs]),
        }
        for (strategy, budget, against, against_budget), pairs in sorted(groups.items())
    ]


def render_multi_fidelity(rows: list[dict[str, Any]]) -> str:
    header = ["strategy", "budget (trials)", "against", "its budget", "pairs"]
    header += ["items, share of its", "mean regret difference"]
    return markdown_table(
        header,
        [
            [
                r["strategy"],
                str(r["budget"]),
                r["against"],
                str(r["against_budget"]),
                str(r["pairs"]),
                f"{r['items_share']:.0%}",
                _signed_with_error(r),
            ]
            for r in rows
        ],
    )


def _pairs(
    runs: list[dict[str, Any]], references: dict[str, Any], *, same_budget: bool = True
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every ordered pair of runs of two strategies on the same landscape, weights and seed
    (and budget, unless ``same_budget`` is false), each as its strategy, budget, regret and
    items."""
    by_place: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if _run_reference(run, references) is None:
            continue
        place = (run["landscape"], run["weights"], run["seed"])
        place += (run["budget"],) if same_budget else ()
        by_place[place].append(
            {
                "strategy": run["strategy"],
                "budget": run["budget"],
                "regret": regret(run, references),
                "items": _items(run),
            }
        )
    return [
        (mine, theirs)
        for group in by_place.values()
        for mine in group
        for theirs in group
        if mine["strategy"] != theirs["strategy"]
    ]


def _mean_and_error(diffs: list[float]) -> dict[str, Any]:
    n = len(diffs)
    stderr = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else None
    return {"pairs": n, "mean": statistics.fmean(diffs), "stderr": stderr}


def _signed_with_error(row: dict[str, Any]) -> str:
    return f"{row['mean']:+.3f}" + (f" ± {row['stderr']:.3f}" if row["stderr"] is not None else "")


def render_differences(rows: list[dict[str, Any]]) -> str:
    header = ["strategy", "against", "budget (trials)", "pairs", "mean regret difference"]
    return markdown_table(
        header,
        [
            [
                r["strategy"],
                r["against"],
                str(r["budget"]),
                str(r["pairs"]),
                _signed_with_error(r),
            ]
            for r in rows
        ],
    )


def _run_reference(run: dict[str, Any], references: dict[str, Any]) -> dict[str, Any] | None:
    return references.get(weights_key(run["landscape"], run.get("weights", "")))


def regret(run: dict[str, Any], references: dict[str, Any]) -> float:
    reference = references[weights_key(run["landscape"], run["weights"])]["reference"]
    return reference - (run["heldout"] if run["heldout"] is not None else 0.0)


def _items(run: dict[str, Any]) -> int:
    return run["items"] if run.get("items") is not None else run["items_estimated"]


def render_regret(rows: list[dict[str, Any]]) -> str:
    header = ["strategy", "budget (trials)", "runs", "median regret", "worst regret"]
    header += ["mean regret", "median items", "median s.e."]
    header += ["behind at 2 s.e.", f"over {WORST_TARGET} at 2 s.e."]
    return markdown_table(
        header,
        [
            [
                r["strategy"],
                str(r["budget"]),
                str(r["runs"]),
                f"{r['median']:+.3f}",
                f"{r['worst']:+.3f}",
                f"{r['mean']:+.3f}",
                f"{r['items']:.0f}" + (" (est.)" if r["items_estimated"] else ""),
                f"{r['stderr']:.3f}" if r["stderr"] is not None else "-",
                f"{r['behind']} of {r['judged']}" if r["judged"] else "-",
                f"{r['over_target']} of {r['judged']}" if r["judged"] else "-",
            ]
            for r in rows
        ],
    )


def plot_regret(runs: list[dict[str, Any]], references: dict[str, Any], path: Path) -> None:
    """Regret of every run against the items it spent, one colour per strategy, with each
    strategy's median per budget joined by a line; hollow markers: items estimated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    palette = plt.get_cmap("tab20").colors  # past ten strategies "C<i>" would repeat colours
    by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if _run_reference(run, references) is not None:
            by_strategy[run["strategy"]].append(run)
    for i, (strategy, group) in enumerate(sorted(by_strategy.items())):
        color = palette[i % len(palette)]
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- demo table

DEMO_MARGIN = 0.10  # what the demo promises over the better specialist, held out
DEMO_FLOOR = 0.05  # what it must gain on every family


def demo_row(landscape: L.Landscape, table: list[dict[str, Any]], run: dict[str, Any]) -> dict:
    """One family's row: its sources (the build's held-out table) and the demo search's pick."""
    by_model = {row["model"]: row["mean"] for row in table}
    specialists = {t: by_model[f"specialist {t}"] for t in landscape.targets}
    better = max(specialists.values())
    margin = run["heldout"] - better if run["heldout"] is not None else None
    return {
        "name": landscape.name,
        "seed": landscape.seed,
        "threads": landscape.threads,
        "base": by_model["base"],
        "specialists": specialists,
        "average": next(v for k, v in by_model.items() if k.endswith("average")),
        "heldout": run["heldout"],
        "method": run["method"],
        "margin": margin,
        "stderr": run.get("gain_stderr"),
        "seconds": run["seconds"],
    }


def render_demo_table(rows: list[dict[str, Any]], *, header: bool = True) -> str:
    columns = ["family", "seed", "threads", "base", "specialist rev / up", "50/50 average"]
    columns += ["demo search best (method)", "vs better specialist (± 1 s.e.)", ">= +0.10"]
    columns += ["search s"]
    return markdown_table(columns, [_demo_cells(r) for r in rows], with_header=header)


def _demo_cells(r: dict[str, Any]) -> list[str]:
    margin = "-" if r["margin"] is None else f"{r['margin']:+.3f}"
    if r["stderr"] is not None:
        margin += f" ± {r['stderr']:.3f}"
    ok = r["margin"] is not None and r["margin"] >= DEMO_MARGIN
    return [
        r["name"],
        *_family_cells(r),
        f"{r['average']:.3f}",
        "-" if r["heldout"] is None else f"{r['heldout']:.3f} ({r['method']})",
        margin,
        "yes" if ok else "**no**",
        f"{r['seconds']:.0f}",
    ]


def demo_verdict(rows: list[dict[str, Any]]) -> str:
    margins = [r["margin"] if r["margin"] is not None else -1.0 for r in rows]
    above = sum(m >= DEMO_MARGIN for m in margins)
    floor = sum(m >= DEMO_FLOOR for m in margins)
    return (
        f"best merge >= +{DEMO_MARGIN:.2f} over the better specialist on {above} of {len(rows)} "
        f"families, >= +{DEMO_FLOOR:.2f} on {floor} of {len(rows)}; smallest margin "
        f"{min(margins):+.3f}, median {statistics.median(margins):+.3f}"
    )


# --------------------------------------------------------------------------- the file


def write_results(reference_json: Path, runs_json: Path) -> None:
    """Rewrite ``bench/RESULTS_efficacy.md`` from what is recorded; keep the hand-written notes.

    Records of every CPU are reported, each CPU in its own section: a family trained on one CPU
    is another landscape than the same recipe trained on another, so their regrets are never
    pooled, and each has its own plot. Every recorded run is reported, whichever subset the
    command that writes the file ran (a run of one landscape once dropped every other CPU's
    regret table)."""
    references = _read(reference_json)
    runs = list(_read(runs_json).values())
    parts = [INTRO]
    rows = landscape_rows([ls for ls in L.LANDSCAPES if L.is_built(ls)])
    if rows:
        parts += ["## Landscapes built here", "", render_landscapes(rows), ""]
    by_cpu = _by_cpu(references)
    for cpu, refs in by_cpu.items():
        cpu_runs = runs_with_reference(runs, refs)
        parts += [
            f"## {cpu}",
            "",
            "### Reference scores",
            "",
            "Per landscape one long search (bench/search_efficacy.py `REFERENCE_SAMPLER`, "
            "all the suite's methods); reference = held-out score of the merge it chose on the "
            "search split. Recorded in `bench/efficacy/reference.json`, keyed by the digest of "
            "the weights they were recorded on.",
            "",
            render_references(refs),
            "",
        ]
        if cpu_runs:
            parts += [
                "### Regret",
                "",
                "regret = reference - held-out score of the merge chosen on the search split; "
                "budgets count every trial, baselines included.",
                "",
                render_regret(regret_rows(cpu_runs, refs)),
                "",
            ]
            differences = paired_differences(cpu_runs, refs)
            if differences:
                parts += [
                    "Against random search on the same landscapes, budgets and seeds (negative: "
                    "less regret than random), mean ± 1 s.e.:",
                    "",
                    render_differences(differences),
                    "",
                ]
            fidelity = multi_fidelity_rows(cpu_runs, refs)
            if fidelity:
                parts += [
                    "Multi-fidelity (the staged pruner) against the same strategy without it at "
                    "the same budget and at half the budget, on the same landscapes and seeds: "
                    "items spent as a share of the other's (median) and regret difference "
                    "(mean ± 1 s.e.):",
                    "",
                    render_multi_fidelity(fidelity),
                    "",
                ]
            plot = plot_path(cpu)
            plot_regret(cpu_runs, refs, plot)
            parts += [f"![regret against items spent on {cpu}]({plot.name})", ""]
    notes = ""
    if RESULTS.is_file() and NOTES_MARK in RESULTS.read_text():
        notes = RESULTS.read_text().split(NOTES_MARK, 1)[1]
    RESULTS.write_text("\n".join(parts) + "\n" + NOTES_MARK + (notes or "\n"))


def plot_path(cpu: str) -> Path:
    """The regret plot of one CPU's runs: ``bench/search_efficacy-<cpu, as a slug>.png``."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    return PLOTS / f"search_efficacy-{slug}.png"


def _by_cpu(references: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """CPU name -> its references (by weights key), CPUs and landscapes in sorted order."""
    groups: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, ref in sorted(references.items()):
        groups[ref["family"].get("cpu", "unknown CPU")][key] = ref
    return dict(sorted(groups.items()))


def runs_with_reference(runs: list[dict[str, Any]], references: dict[str, Any]) -> list[dict]:
    """The runs that have a reference among ``references`` (made on the same weights)."""
    return [run for run in runs if _run_reference(run, references) is not None]


def weights_key(name: str, weights: str) -> str:
    """Key of a landscape's records in the JSON files: its name and the digest of the weights
    they were recorded on (another CPU trains other weights, whose records stay beside these)."""
    return f"{name}@{weights}"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
