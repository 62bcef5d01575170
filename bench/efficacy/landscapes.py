"""The landscapes of the search-efficacy suite: demo families the project builds itself.

A landscape is a family (base + 2 or 3 specialists, ``search.demo.family``) together with its
targets' lm-eval task files (search and held-out splits) and the search spec that merges it.
Families are generated, never committed: they lie under ``bench/out/efficacy/families/``
(git-ignored) and cost a few minutes each to build; a built one is reused (its manifest's
digest).

The set spans what a default strategy meets: the demo's own family over six seeds (the winning
method changes with the seed), three seeds again with two torch threads (threads change the
summation order as another CPU does, and so train another family), other task pairs, a merge of
three specialists, and one family whose plain 50/50 average is the best merge (where a strategy
must not over-explore). One landscape is not built at all: ``shipped-s0`` is the demo family
that ships with mergesearch (``configs/demo-family``), the only one whose weights, and so whose
reference, are the same on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesearch import merging
from mergesearch.search.demo import tasks as demo_tasks
from mergesearch.search.demo.family import (
    DemoFamily,
    DemoRecipe,
    build_demo_family,
    load_demo_family,
    shipped_family,
)
from mergesearch.search.demo.layout import BASE_DIR, family_dirname, specialist_dir, task_folder
from mergesearch.search.demo.table import METRIC

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "out" / "efficacy"
FAMILIES = OUT / "families"

# The suite's methods: every family of task-vector merges the engine has, plus the plain average.
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "della")
# Spherical interpolation of two specialists. Plain `slerp` takes the base and one other model,
# so a spec with a base and two specialists is refused; `nuslerp` interpolates the two task
# vectors over the base, which is the spherical merge of a pair.
PAIR_METHODS = ("nuslerp",)
# Shared ranges; a spec lists only those that one of its methods takes (a range no method takes
# is refused).
RANGES: dict[str, dict[str, float]] = {
    "weight": {"low": 0.1, "high": 1.0},
    "density": {"low": 0.1, "high": 1.0},
    "lambda": {"low": 0.5, "high": 2.5},
    "t": {"low": 0.0, "high": 1.0},
}
# DELLA keeps each entry with a probability spread epsilon (0.15) around the density, so it takes
# only densities in (epsilon, 1 - epsilon): it gets its own range inside that.
METHOD_RANGES: dict[str, dict[str, dict[str, float]]] = {
    "della": {"density": {"low": 0.2, "high": 0.8}},
}
BATCH_SIZE = 32
SEARCH_THREADS = 1  # searches run on one thread: the landscape's threads only trained it


@dataclass(frozen=True)
class Landscape:
    """One family of the suite: its targets, seed, training threads and recipe changes."""

    name: str
    seed: int
    targets: tuple[str, ...] = demo_tasks.EVAL_TASKS
    threads: int = 1
    recipe_changes: tuple[tuple[str, Any], ...] = ()
    note: str = ""
    # the family mergesearch ships (``configs/demo-family``): read in place, never trained, so
    # it holds the same weights on every machine and its reference carries over between CPUs
    shipped: bool = False

    @property
    def recipe(self) -> DemoRecipe:
        return DemoRecipe(targets=self.targets, **dict(self.recipe_changes))

    @property
    def root(self) -> Path:
        """The family's folder (``base/``, ``spec-<task>/``, ``manifest.json``)."""
        if self.shipped:
            from mergesearch.configs import DEMO_FAMILY_DIR

            return DEMO_FAMILY_DIR / family_dirname(self.targets, self.seed)
        return FAMILIES / self.name / family_dirname(self.targets, self.seed)

    @property
    def task_folder(self) -> Path:
        """lm-eval's ``include_path`` for the targets' ``demo_<task>_<split>`` tasks."""
        return task_folder(self.root, self.targets)

    @property
    def methods(self) -> tuple[str, ...]:
        """The suite's methods for this landscape (pair methods only for two specialists)."""
        return METHODS + (PAIR_METHODS if len(self.targets) == 2 else ())


def _demo(seed: int, threads: int = 1) -> Landscape:
    suffix = "" if threads == 1 else f"-t{threads}"
    return Landscape(f"demo-s{seed}{suffix}", seed, threads=threads)


LANDSCAPES: tuple[Landscape, ...] = (
    Landscape("shipped-s0", 0, shipped=True, note="the shipped family: same weights everywhere"),
    *(_demo(seed) for seed in range(6)),
    *(_demo(seed, threads=2) for seed in range(6)),
    Landscape("sort-double-s0", 0, ("sort", "double"), note="merges collapse"),
    Landscape("shift-copy-s0", 0, ("shift", "copy"), note="linear blends best"),
    Landscape("swap-rev-s0", 0, ("swap", "rev")),
    Landscape("rev-up-double-s0", 0, ("rev", "up", "double"), note="three specialists"),
    # Both specialists replay the other target: each barely forgets it, and no merge beats the
    # plain 50/50 average by more than the noise of 400 items (a strategy must not over-explore).
    Landscape(
        "up-copy-replay-s0",
        0,
        ("up", "copy"),
        recipe_changes=(("replay_targets", True),),
        note="the 50/50 average is the best merge",
    ),
)
# Families tried for the average-is-best landscape and left out of the suite (buildable by name,
# so RESULTS_efficacy.md's notes can be reproduced).
CANDIDATES: tuple[Landscape, ...] = (
    Landscape("copy-swap-s0", 0, ("copy", "swap")),
    Landscape("up-shift-s0", 0, ("up", "shift")),
    Landscape("rev-up-known-s0", 0, recipe_changes=(("base_target_weight", 1.0),)),
    Landscape(
        "shift-copy-known-s0", 0, ("shift", "copy"), recipe_changes=(("base_target_weight", 1.0),)
    ),
    Landscape("rev-up-replay-s0", 0, recipe_changes=(("replay_targets", True),)),
    Landscape(
        "rev-up-soup-s0",
        0,
        recipe_changes=(("replay_targets", True), ("base_target_weight", 1.0)),
    ),
)
BY_NAME = {landscape.name: landscape for landscape in LANDSCAPES + CANDIDATES}


def get(name: str) -> Landscape:
    """The landscape called ``name``, or ``KeyError`` listing the names."""
    if name not in BY_NAME:
        raise KeyError(f"no landscape {name!r}; landscapes: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def build(landscape: Landscape, *, force: bool = False) -> DemoFamily:
    """Build (or reuse) the landscape's family and score its table on the held-out split; the
    shipped family is only loaded (training it here would give other weights)."""
    if landscape.shipped:
        family = shipped_family(landscape.seed, landscape.recipe)
        if family is None:
            raise FileNotFoundError(
                f"the shipped family for seed {landscape.seed} is missing or was made by another "
                f"recipe ({landscape.root}); restore it from git"
            )
        return family
    return build_demo_family(
        FAMILIES / landscape.name,
        seed=landscape.seed,
        threads=landscape.threads,
        recipe=landscape.recipe,
        force=force,
    )


def weights_digest(landscape: Landscape) -> str:
    """Hash of the family's weight files: which weights a reference was recorded on.

    The recipe digest names how a family is trained, not what training gives: another CPU (or
    thread count) trains other weights from the same recipe and seed, so a reference recorded on
    one machine says nothing about the family another machine builds.
    """
    digest = hashlib.sha256()
    for path in sorted(landscape.root.glob("*/*.safetensors")):
        digest.update(path.relative_to(landscape.root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def is_built(landscape: Landscape) -> bool:
    return load_demo_family(landscape.root, landscape.recipe, landscape.seed) is not None


def items_per_trial(landscape: Landscape) -> int:
    """Items one unpruned trial evaluates: the search split of every target."""
    return demo_tasks.SPLIT_SIZE * len(landscape.targets)


def spec_for(
    landscape: Landscape,
    *,
    methods: Sequence[str],
    sampler: str | dict[str, Any],
    budget: int,
    seed: int,
    storage: str,
    pruner: str | dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A search spec (the shape of ``configs/searches/demo.yaml``) that merges the landscape.

    Objectives: each target's greedy exact match, equal weights, chosen on the ``search`` split
    and reported on ``heldout``. ``budget`` counts every trial, baselines included, as a user's
    spec does. The family must be built (``build``).
    """
    if not is_built(landscape):
        raise FileNotFoundError(
            f"landscape {landscape.name!r} is not built at {landscape.root}; "
            "run: python bench/search_efficacy.py build"
        )
    methods = list(methods)
    taken = set()
    for method in methods:
        if method not in merging.METHODS:
            raise ValueError(f"unknown merge method {method!r}")
        taken |= set(merging.METHODS[method].per_model_params)
        taken |= set(merging.METHODS[method].global_params)
    spec: dict[str, Any] = {
        "name": name or f"efficacy-{landscape.name}",
        "storage": storage,
        "seed": seed,
        "threads": SEARCH_THREADS,
        "dtype": "float32",
        "sources": {
            "base": str(landscape.root / BASE_DIR),
            "models": {t: str(landscape.root / specialist_dir(t)) for t in landscape.targets},
        },
        "methods": {m: {p: dict(r) for p, r in METHOD_RANGES.get(m, {}).items()} for m in methods},
        "parameters": {p: dict(r) for p, r in RANGES.items() if p in taken},
        "objectives": [
            {
                "name": t,
                "metric": METRIC,
                "weight": 1 / len(landscape.targets),
                "splits": {split: demo_tasks.task_name(t, split) for split in demo_tasks.SPLITS},
            }
            for t in landscape.targets
        ],
        "evaluators": {
            "lm_eval": {"batch_size": BATCH_SIZE, "include_path": str(landscape.task_folder)}
        },
        "sampler": {"name": sampler} if isinstance(sampler, str) else dict(sampler),
        "budget": {"trials": budget},
    }
    if pruner is not None:
        spec["pruner"] = {"name": pruner} if isinstance(pruner, str) else dict(pruner)
    return spec
