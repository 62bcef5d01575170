"""Where a demo family's parts live inside its folder: one place that the builder and the table
both read, so neither needs the other to find a model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mergesearch.configs import TASKS_DIR
from mergesearch.search.demo import tasks as demo_tasks

MANIFEST = "manifest.json"
BASE_DIR = "base"
SPECIALISTS = demo_tasks.EVAL_TASKS  # the demo's targets; a family's own are in its manifest
TASKS_SUBDIR = "tasks"  # lm-eval files of a family whose targets are not the demo's


def specialist_dir(task: str) -> str:
    """Folder name of the specialist fine-tuned on ``task``."""
    return f"spec-{task}"


def family_dirname(targets: Sequence[str], seed: int) -> str:
    """``seed<k>`` for the demo's targets, ``<t1>-<t2>-seed<k>`` for others: families of other
    targets never overwrite the demo's in a shared folder."""
    if tuple(targets) == demo_tasks.EVAL_TASKS:
        return f"seed{seed}"
    return f"{'-'.join(targets)}-seed{seed}"


def family_targets(root: Path) -> tuple[str, ...]:
    """The targets of the family in ``root`` (its manifest's specialists), the demo's if none."""
    try:
        return tuple(json.loads((root / MANIFEST).read_text())["specialists"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return demo_tasks.EVAL_TASKS


def task_folder(root: Path, targets: Sequence[str]) -> Path:
    """Where the lm-eval task files of a family's targets lie (lm-eval's ``include_path``): the
    committed ``configs/tasks`` for the demo's targets, the family's own ``tasks/`` otherwise."""
    return TASKS_DIR if tuple(targets) == demo_tasks.EVAL_TASKS else root / TASKS_SUBDIR
