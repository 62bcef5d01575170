"""The demo family builder, on a shrunken recipe (the full one is bench/demo_family.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mergesearch.search.demo.family import (
    DEMO_DIR_ENV,
    DemoRecipe,
    build_demo_family,
    default_demo_dir,
)

TINY = DemoRecipe(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    batch_size=8,
    warmup_steps=2,
    base_steps=4,
    specialist_max_steps=4,
    base_extra_max_steps=2,
    check_every=2,
    probe_words=4,
)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_demo_family(tmp_path_factory.mktemp("demo"), seed=3, recipe=TINY)


def test_family_is_hugging_face_folders_and_a_table(family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert family.root.name == "seed3" and not family.cached
    for path in [family.base, *family.specialists.values()]:
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.hidden_size == 32 and len(tokenizer) == model.config.vocab_size
    assert sorted(family.specialists) == ["rev", "up"]
    names = [row["model"] for row in family.table]
    assert names == [
        "base",
        "specialist rev",
        "specialist up",
        "50/50 average",
        "hand-picked merge",
    ]
    for row in family.table:
        assert 0.0 <= row["mean"] <= 1.0
        assert row["mean"] == pytest.approx((row["rev"] + row["up"]) / 2)
    manifest = json.loads((family.root / "manifest.json").read_text())
    assert manifest["table"] == family.table


def test_second_build_reuses_the_cache(family):
    started = time.perf_counter()
    again = build_demo_family(family.root.parent, seed=3, recipe=TINY)
    assert again.cached and again.table == family.table
    assert time.perf_counter() - started < 1.0
    # another recipe is another family: the cache does not answer for it
    other = DemoRecipe(**{**TINY.__dict__, "base_steps": 5})
    assert other.digest(3) != TINY.digest(3)


def test_build_is_deterministic(family, tmp_path):
    again = build_demo_family(tmp_path, seed=3, recipe=TINY, evaluate=False)
    for a, b in [(family.base, again.base)] + [
        (family.specialists[t], again.specialists[t]) for t in family.specialists
    ]:
        ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert ta.keys() == tb.keys()
        assert all((ta[k] == tb[k]).all() for k in ta)
    assert (family.base / "tokenizer.json").read_bytes() == (
        again.base / "tokenizer.json"
    ).read_bytes()


def test_demo_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(DEMO_DIR_ENV, str(tmp_path))
    assert default_demo_dir() == tmp_path
    monkeypatch.delenv(DEMO_DIR_ENV)
    assert default_demo_dir() == Path.cwd() / "results" / "demo-models"
