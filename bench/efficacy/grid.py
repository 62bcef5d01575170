"""A grid of hand-set merges of one landscape: where does the plain average stand?

Linear blends around the average, task arithmetic at several scales and TIES over density x
lambda, each scored on the search split (where a search would choose) and the held-out split
(what it would report). A landscape whose average is "the best merge" should see no grid merge
beat it clearly on either split.
"""

from __future__ import annotations

import itertools
from typing import Any

from bench.efficacy.landscapes import Landscape
from mergesearch.search.demo.table import (
    DemoScorer,
    average_config,
    describe,
    linear_config,
    task_arithmetic_config,
    ties_config,
)


def grid_configs(landscape: Landscape) -> list[dict[str, Any]]:
    root, targets = landscape.root, landscape.targets
    configs = [average_config(root)]
    if len(targets) == 2:
        a, b = targets
        configs += [linear_config(root, {a: w, b: 1 - w}) for w in (0.2, 0.3, 0.4, 0.6, 0.7, 0.8)]
        configs += [
            task_arithmetic_config(root, {a: x, b: y})
            for x, y in itertools.product((0.4, 0.5, 0.7, 1.0), repeat=2)
        ]
    else:
        for heavy in targets:
            weights = {t: (2.0 if t == heavy else 1.0) for t in targets}
            total = sum(weights.values())
            configs.append(linear_config(root, {t: w / total for t, w in weights.items()}))
        configs += [
            task_arithmetic_config(root, dict.fromkeys(targets, s)) for s in (0.33, 0.5, 0.7, 1.0)
        ]
    configs += [
        ties_config(root, d, lam) for d, lam in itertools.product((0.2, 0.4, 0.7), (0.7, 1.0, 1.5))
    ]
    return configs


def grid_table(landscape: Landscape) -> str:
    """Markdown table of every grid merge, best on the search split first."""
    search = DemoScorer(landscape.root, split="search", threads=1)
    heldout = DemoScorer(landscape.root, split="heldout", threads=1)
    rows = []
    for i, config in enumerate(grid_configs(landscape)):
        label = ("average: " if i == 0 else "") + describe(config)
        rows.append((search.scores(config)["mean"], heldout.scores(config)["mean"], label))
    rows.sort(key=lambda r: -r[0])
    average = next(r for r in rows if r[2].startswith("average"))
    best_heldout = max(r[1] for r in rows)
    lines = [
        f"{landscape.name}: {len(rows)} merges; average search {average[0]:.3f} "
        f"held-out {average[1]:.3f}; best search {rows[0][0]:.3f} ({rows[0][2]}, held-out "
        f"{rows[0][1]:.3f}); best held-out of the grid {best_heldout:.3f}",
        "",
        "| merge | search | held-out |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {s:.3f} | {h:.3f} |" for s, h, label in rows]
    return "\n".join(lines)
