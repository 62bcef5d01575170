"""The family build shows its phase, steps and an ETA, and the ETA's total stays honest when a
phase that trains until a probe holds stops early."""

from __future__ import annotations

import random

from mergesearch.search.demo.family import (
    BuildProgress,
    DemoRecipe,
    base_mixture,
    build_model,
    build_tokenizer,
    train,
)

TINY = DemoRecipe(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    batch_size=4,
    warmup_steps=2,
    check_every=3,
)


def test_total_is_the_most_steps_and_shrinks_when_a_phase_stops_early():
    progress = BuildProgress(100)
    progress.start("base", 40)
    for _ in range(40):
        progress.step()
    progress.end()
    assert (progress.bar.n, progress.bar.total) == (40, 100)
    progress.start("specialist up", 60)
    for _ in range(10):
        progress.step()
    progress.end()  # stopped after 10 of at most 60 steps
    assert (progress.bar.n, progress.bar.total) == (50, 50)
    progress.close()


def test_recipe_total_counts_base_extra_and_every_specialist():
    recipe = DemoRecipe(base_steps=10, base_extra_max_steps=20, specialist_max_steps=30)
    progress = BuildProgress.for_recipe(recipe, enabled=False)
    assert progress.bar.total == 10 + 20 + 2 * 30


def test_training_reports_its_phase_and_steps(capsys):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TINY, seed=0)
    progress = BuildProgress(20)
    checks = []

    def until(_model) -> bool:
        checks.append(1)
        return len(checks) == 2  # stops at the second check: step 6 of at most 20

    train(
        model,
        tokenizer,
        base_mixture(TINY),
        steps=20,
        lr=1e-3,
        recipe=TINY,
        rng=random.Random(0),
        until=until,
        progress=progress,
        phase="specialist rev",
    )
    progress.close()
    assert (progress.bar.n, progress.bar.total) == (6, 6)
    err = capsys.readouterr().err
    assert "specialist rev" in err and "6/6" in err and "step" in err
