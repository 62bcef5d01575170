"""Where a demo family's parts live inside its folder: one place that the builder and the table
both read, so neither needs the other to find a model."""

from __future__ import annotations

from mergesearch.search.demo import tasks as demo_tasks

MANIFEST = "manifest.json"
BASE_DIR = "base"
SPECIALISTS = demo_tasks.EVAL_TASKS


def specialist_dir(task: str) -> str:
    """Folder name of the specialist fine-tuned on ``task``."""
    return f"spec-{task}"
