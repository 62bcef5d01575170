"""The demo task data: committed files up to date, splits disjoint, training words apart."""

from __future__ import annotations

import random

from mergesearch.search.demo import tasks as demo_tasks


def test_committed_task_files_are_what_the_generator_writes(tmp_path):
    for path in demo_tasks.write_task_files(tmp_path):
        committed = demo_tasks.TASKS_DIR / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), f"regenerate {committed}"


def test_search_and_heldout_are_disjoint_and_training_avoids_both():
    for task in demo_tasks.EVAL_TASKS:
        search = {r["word"] for r in demo_tasks.eval_records(task, "search")}
        heldout = {r["word"] for r in demo_tasks.eval_records(task, "heldout")}
        assert len(search) == len(heldout) == demo_tasks.SPLIT_SIZE
        assert not search & heldout
    words = demo_tasks.training_words(random.Random(0))
    drawn = {next(words) for _ in range(20000)}
    assert not drawn & demo_tasks.eval_words()


def test_answers():
    answers = {name: task.answer("abcz") for name, task in demo_tasks.TASKS.items()}
    assert answers == {
        "rev": "zcba",
        "up": "ABCZ",
        "copy": "abcz",
        "shift": "bcda",
        "sort": "abcz",
        "double": "aabbcczz",
        "swap": "zbca",
    }
