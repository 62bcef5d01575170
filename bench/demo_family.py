"""Build the demo family on several seeds and show that merging matters.

    python bench/demo_family.py --seeds 0 1 2 [--out DIR] [--force] [--markdown FILE]

For each seed: build (or reuse) the family exactly as ``mergesearch demo build`` does and print
its held-out table; then run a small grid of merges (linear, per-model task arithmetic, TIES)
scored on the **search** split, take the best, and score it on the **held-out** split. The
summary has, per seed, the table's rows plus that best merge and its margin over the better
specialist. ``--markdown`` writes the summary as a markdown file.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergesearch.search.demo.family import build_demo_family, default_demo_dir
from mergesearch.search.demo.table import (
    DemoScorer,
    describe,
    linear_config,
    print_table,
    task_arithmetic_config,
    ties_config,
)


def grid(root: Path) -> list[dict]:
    """35 merges around the ridge where good merges lie (``docs/DEMO.md``)."""
    configs = [linear_config(root, {"rev": w, "up": 1 - w}) for w in (0.3, 0.4, 0.5, 0.6)]
    configs += [
        task_arithmetic_config(root, {"rev": r, "up": u})
        for r, u in itertools.product((0.6, 0.7, 0.8, 0.9, 1.0), repeat=2)
    ]
    configs += [
        ties_config(root, d, lam) for d, lam in itertools.product((0.3, 0.5), (1.0, 1.2, 1.4))
    ]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="rebuild cached families")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or default_demo_dir()

    summary = []
    for seed in args.seeds:
        started = time.perf_counter()
        family = build_demo_family(out, seed=seed, threads=args.threads, force=args.force)
        took = time.perf_counter() - started
        print_table(
            family.table, f"seed {seed}: held-out exact match (build {family.build_seconds:.0f} s)"
        )

        search = DemoScorer(family.root, split="search", threads=args.threads)
        grid_started = time.perf_counter()
        scored = [(search.scores(c)["mean"], c) for c in grid(family.root)]
        best_search, best = max(scored, key=lambda sc: sc[0])
        heldout = DemoScorer(family.root, split="heldout", threads=args.threads)
        best_row = {"model": "best of grid", "recipe": describe(best), **heldout.scores(best)}
        grid_seconds = time.perf_counter() - grid_started
        rows = {r["model"]: r for r in family.table}
        better = max(rows["specialist rev"]["mean"], rows["specialist up"]["mean"])
        summary.append(
            {
                "seed": seed,
                "rows": rows,
                "best": best_row,
                "best_search": best_search,
                "margin": best_row["mean"] - better,
                "margin_avg": best_row["mean"] - rows["50/50 average"]["mean"],
                "build_seconds": family.build_seconds,
                "cached": family.cached,
                "call_seconds": took,
                "grid_seconds": grid_seconds,
                "grid_size": len(scored),
            }
        )
        print(
            f"seed {seed}: best of {len(scored)} on search = {best_row['recipe']} "
            f"(search {best_search:.3f}, held-out {best_row['mean']:.3f}, "
            f"{best_row['mean'] - better:+.3f} vs better specialist), grid {grid_seconds:.0f} s"
        )

    text = markdown(summary)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text)


def markdown(summary: list[dict]) -> str:
    lines = [
        "Mean greedy exact match over `rev` and `up`, held-out split (200 items per task); "
        "per-task scores in brackets (rev / up).",
        "",
        "| seed | base | specialist rev | specialist up | 50/50 average | hand-picked merge | "
        "best of grid (chosen on search split) | held-out | vs better specialist | vs 50/50 | "
        "build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict) -> str:
        return f"{row['mean']:.3f} ({row['rev']:.2f} / {row['up']:.2f})"

    for s in summary:
        r = s["rows"]
        lines.append(
            f"| {s['seed']} | {cell(r['base'])} | {cell(r['specialist rev'])} | "
            f"{cell(r['specialist up'])} | {cell(r['50/50 average'])} | "
            f"{cell(r['hand-picked merge'])} | {s['best']['recipe']} | {cell(s['best'])} | "
            f"{s['margin']:+.3f} | {s['margin_avg']:+.3f} | {s['build_seconds']:.0f} |"
        )
    hand = summary[0]["rows"]["hand-picked merge"]["recipe"]
    lines += ["", f"Hand-picked merge: {hand}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
