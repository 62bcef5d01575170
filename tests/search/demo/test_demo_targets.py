"""A demo family of other targets than the demo's: built by the same recipe, scored on its own
task files, and its specialists learn their tasks (a small recipe that still learns)."""

from __future__ import annotations

import json

import pytest

from mergesearch.search.demo import tasks as demo_tasks
from mergesearch.search.demo.family import DemoRecipe, build_demo_family

TARGETS = ("up", "copy")
SMALL = DemoRecipe(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    batch_size=32,
    warmup_steps=10,
    base_steps=600,
    base_lr=3e-3,
    base_extra_max_steps=0,
    specialist_lr=2e-3,
    specialist_max_steps=200,
    check_every=25,
    probe_words=16,
    targets=TARGETS,
)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_demo_family(tmp_path_factory.mktemp("targets"), seed=1, recipe=SMALL)


def test_family_of_other_targets_has_its_own_folder_models_and_tasks(family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert family.root.name == "up-copy-seed1" and not family.cached
    assert list(family.specialists) == list(TARGETS)
    tokenizer_bytes = {
        (p / "tokenizer.json").read_bytes() for p in [family.base, *family.specialists.values()]
    }
    assert len(tokenizer_bytes) == 1  # one tokenizer: the models merge
    for path in [family.base, *family.specialists.values()]:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 2)
        assert len(tokenizer) == model.config.vocab_size == SMALL.vocab_size
    for task in TARGETS:
        for split in demo_tasks.SPLITS:
            assert (family.root / "tasks" / f"{demo_tasks.task_name(task, split)}.yaml").is_file()
            records = [
                json.loads(line)
                for line in (family.root / "tasks" / "data" / f"{task}_{split}.jsonl")
                .read_text()
                .splitlines()
            ]
            assert records == demo_tasks.eval_records(task, split)
    manifest = json.loads((family.root / "manifest.json").read_text())
    assert (
        manifest["digest"]
        == SMALL.digest(1)
        != DemoRecipe(**{**SMALL.__dict__, "targets": ("rev", "up")}).digest(1)
    )


def test_each_specialist_beats_the_base_on_its_own_task(family):
    rows = {row["model"]: row for row in family.table}
    assert list(rows) == [
        "base",
        "specialist up",
        "specialist copy",
        "50/50 average",
        "hand-picked merge",
    ]
    for task in TARGETS:
        assert rows[f"specialist {task}"][task] > rows["base"][task] + 0.1, rows
    for row in rows.values():
        assert row["mean"] == pytest.approx((row["up"] + row["copy"]) / 2)


def test_targets_are_checked():
    with pytest.raises(ValueError, match="2 or 3 distinct"):
        DemoRecipe(targets=("up",))
    with pytest.raises(ValueError, match="unknown demo task 'upp'"):
        DemoRecipe(targets=("upp", "copy"))


def test_training_words_avoid_the_targets_evaluation_words():
    import random

    words = demo_tasks.training_words(random.Random(0), TARGETS)
    drawn = {next(words) for _ in range(20000)}
    assert not drawn & demo_tasks.eval_words(TARGETS)
    assert demo_tasks.eval_words(TARGETS) > demo_tasks.eval_words()  # the demo's words too


def test_specialists_replay_the_other_targets_only_when_asked():
    from mergesearch.search.demo.family import specialist_mixture

    plain = specialist_mixture("up", SMALL)
    assert "copy" not in plain and plain["up"] == 0.5
    assert sum(plain.values()) == pytest.approx(1.0)
    replay = specialist_mixture("up", DemoRecipe(targets=TARGETS, replay_targets=True))
    assert replay["copy"] > 0 and replay["up"] == 0.5
    assert sum(replay.values()) == pytest.approx(1.0)
