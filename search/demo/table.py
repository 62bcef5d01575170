"""The demo family's table: does merging matter? Scored with the real lm_eval evaluator.

Rows: the base, each specialist, the naive 50/50 average of the specialists (1/3 each for three)
and a hand-picked merge, each as mean greedy exact match on the held-out split of the family's
targets (``rev`` and ``up`` for the demo; the manifest names a family's own). Merges are
mergekit-style configs (plain dicts), written into one live model in place, as a search does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergesearch.search.demo import tasks as demo_tasks
from mergesearch.search.demo.layout import (
    BASE_DIR,
    family_targets,
    specialist_dir,
    task_folder,
)

METRIC = "exact_match,strip"

# TIES, density 0.3, lambda 1.0: a merge in the good region on every seed of the recipe (the
# grid of bench/demo_family.py; scores in bench/RESULTS_demo.md), so the table shows what one
# reasonable hand-made merge gives before any search.
HAND_PICKED = {"merge_method": "ties", "density": 0.3, "lambda": 1.0}
# What the table measures; a cached family whose table was made otherwise is re-scored.
TABLE_KEY = json.dumps({"hand_picked": HAND_PICKED, "metric": METRIC}, sort_keys=True)


def average_label(n_specialists: int) -> str:
    """The table's name of the naive average (tests and benches look rows up by it)."""
    return "50/50 average" if n_specialists == 2 else f"1/{n_specialists} average"


def _specialist_dirs(root: Path) -> dict[str, str]:
    return {t: specialist_dir(t) for t in family_targets(root)}


def average_config(root: Path) -> dict[str, Any]:
    """The naive merge: the specialists averaged, equal weights."""
    dirs = _specialist_dirs(root)
    return {
        "merge_method": "linear",
        "models": [
            {"model": str(root / d), "parameters": {"weight": 1 / len(dirs)}} for d in dirs.values()
        ],
        "dtype": "float32",
    }


def ties_config(root: Path, density: float, lam: float) -> dict[str, Any]:
    return {
        "merge_method": "ties",
        "base_model": str(root / BASE_DIR),
        "models": [
            {"model": str(root / d), "parameters": {"weight": 1.0, "density": density}}
            for d in _specialist_dirs(root).values()
        ],
        "parameters": {"lambda": lam},
        "dtype": "float32",
    }


def task_arithmetic_config(root: Path, weights: Mapping[str, float]) -> dict[str, Any]:
    """Task arithmetic with one weight per specialist (keyed by its task)."""
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(root / BASE_DIR),
        "models": [
            {"model": str(root / d), "parameters": {"weight": weights[t]}}
            for t, d in _specialist_dirs(root).items()
        ],
        "dtype": "float32",
    }


def linear_config(root: Path, weights: Mapping[str, float]) -> dict[str, Any]:
    return {
        "merge_method": "linear",
        "models": [
            {"model": str(root / d), "parameters": {"weight": weights[t]}}
            for t, d in _specialist_dirs(root).items()
        ],
        "dtype": "float32",
    }


def describe(config: Mapping[str, Any]) -> str:
    """A short human label of a demo merge config."""
    method = config["merge_method"]
    weights = "/".join(f"{m['parameters'].get('weight', 1.0):g}" for m in config["models"])
    if method == "ties":
        density = config["models"][0]["parameters"]["density"]
        return f"ties density {density:g} lambda {config['parameters']['lambda']:g}"
    names = "/".join(
        Path(m["model"]).name.removeprefix(specialist_dir("")) for m in config["models"]
    )
    return f"{method} weights {weights} ({names})"


def family_table(
    root: Path, *, threads: int | None = 1, split: str = "heldout", progress: bool = False
) -> list[dict]:
    """Score base, specialists, the 50/50 average and the hand-picked merge of a family
    (``progress``: a bar over the rows, with the one being scored)."""
    import sys

    from tqdm.auto import tqdm

    scorer = DemoScorer(root, split=split, threads=threads)
    picked = ties_config(root, HAND_PICKED["density"], HAND_PICKED["lambda"])
    todo: list[tuple[str, Any, Path | None]] = [("base", None, root / BASE_DIR)]
    todo += [(f"specialist {t}", None, root / d) for t, d in _specialist_dirs(root).items()]
    todo += [(average_label(len(scorer.targets)), average_config(root), None)]
    todo += [("hand-picked merge", picked, None)]
    rows = []
    # explicit `disable`: the demo silences third-party bars through TQDM_DISABLE
    bar = tqdm(todo, unit="model", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for label, config, model in bar:
        bar.set_description(f"scoring {label}")
        rows.append(scorer.row(label, config, model))
    bar.close()
    return rows


class DemoScorer:
    """One evaluator and one working model, reused for every row (as a search reuses them)."""

    def __init__(self, root: Path, *, split: str = "heldout", threads: int | None = 1) -> None:
        from transformers import AutoTokenizer, LlamaForCausalLM

        from mergesearch import evaluators, merging

        self.root = root
        self.split = split
        self.targets = family_targets(root)
        self.tasks = [demo_tasks.task_name(t, split) for t in self.targets]
        self.evaluator = evaluators.get(
            "lm_eval",
            tasks=self.tasks,
            metrics=[METRIC],
            threads=threads,
            include_path=task_folder(root, self.targets),
        )
        self.tokenizer = AutoTokenizer.from_pretrained(root / BASE_DIR)
        self.work = LlamaForCausalLM.from_pretrained(root / BASE_DIR)
        self.merger = merging.Merger()  # keeps the family's checkpoints open between merges

    def scores(
        self,
        config: Mapping[str, Any] | None,
        model_dir: Path | None = None,
        *,
        per_item: bool = False,
        seed: int | None = 0,
    ) -> dict:
        """Per-task exact match and their mean, of a merge config or of a saved model.

        ``per_item`` adds ``items``: per task the ``(document id, score)`` pairs, for paired
        comparisons of two merges on the same items. ``seed`` seeds the merge's random draws
        (DARE, DELLA); ``None`` keeps the config's own, to rebuild a merge a search recorded.
        """
        from mergesearch import merging

        if config is not None:
            # in place, through the project's merge engine, exactly as a search trial merges
            self.merger.merge_into(merging.load_merge_config(dict(config)), self.work, seed=seed)
            model = self.work
        else:
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM.from_pretrained(model_dir)
        result = self.evaluator.evaluate(model, self.tokenizer, per_item=per_item)
        keys = {t: f"{demo_tasks.task_name(t, self.split)}/{METRIC}" for t in self.targets}
        per_task = {t: result.metrics[key] for t, key in keys.items()}
        out = {**per_task, "mean": sum(per_task.values()) / len(per_task)}
        if per_item:
            out["items"] = {t: list(result.items[key]) for t, key in keys.items()}
        return out

    def row(
        self, name: str, config: Mapping[str, Any] | None, model_dir: Path | None = None
    ) -> dict:
        recipe = describe(config) if config is not None else ""
        return {"model": name, "recipe": recipe, **self.scores(config, model_dir)}


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    targets = [k for k in rows[0] if k not in ("model", "recipe", "mean")] if rows else []
    table = Table(title=title)
    table.add_column("model")
    table.add_column("merge")
    for task in targets:
        table.add_column(f"{task} EM", justify="right")
    table.add_column("mean EM", justify="right")
    for row in rows:
        table.add_row(
            row["model"],
            row["recipe"],
            *(f"{row[t]:.3f}" for t in targets),
            f"{row['mean']:.3f}",
        )
    Console().print(table)
