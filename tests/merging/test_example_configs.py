"""The example configs of ``configs/merges/`` run end to end through ``mergesearch merge``.

The configs name real Mistral-7B fine-tunes on the Hub. Here every Hub id is rewritten to a
tiny local Mistral checkpoint of the same family (``mistralai/Mistral-7B-v0.1`` becomes the base,
the fine-tunes become perturbations of it) and every ``layer_range`` is scaled from 32 layers
down to the tiny model's 8. The merged output must load with ``AutoModelForCausalLM``, have the
expected ``num_hidden_layers`` and exactly the expected tensor names, and run a forward pass.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.helpers.tiny_models import load_state, make_mistral_family

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "configs" / "merges"
EXAMPLE_NAMES = ["slerp", "ties", "dare_ties", "passthrough"]

HUB_LAYERS = 32  # Mistral-7B
TINY_LAYERS = 8
BASE_ID = "mistralai/Mistral-7B-v0.1"
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _hub_ids(doc: Any) -> set[str]:
    if isinstance(doc, dict):
        found = {v for k, v in doc.items() if k in ("model", "base_model") and isinstance(v, str)}
        return found.union(*(_hub_ids(v) for v in doc.values()))
    if isinstance(doc, list):
        return set().union(*(_hub_ids(v) for v in doc))
    return set()


def _rewrite(doc: Any, paths: dict[str, Path]) -> Any:
    """Hub ids -> local paths; layer ranges scaled from the Hub model's depth to the tiny one's."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            if key in ("model", "base_model") and isinstance(value, str):
                out[key] = str(paths[value])
            elif key == "layer_range":
                out[key] = [v * TINY_LAYERS // HUB_LAYERS for v in value]
            else:
                out[key] = _rewrite(value, paths)
        return out
    if isinstance(doc, list):
        return [_rewrite(v, paths) for v in doc]
    return doc


def _expected_layers(doc: dict[str, Any]) -> int:
    if "slices" not in doc:
        return TINY_LAYERS
    return sum(
        s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in doc["slices"]
    )


def _expected_names(reference: dict[str, torch.Tensor], n_layers: int) -> set[str]:
    per_layer = {m.group(2) for name in reference if (m := LAYER_NAME.match(name))}
    outside = {name for name in reference if not LAYER_NAME.match(name)}
    return outside | {f"model.layers.{i}.{rest}" for i in range(n_layers) for rest in per_layer}


@pytest.fixture(scope="module")
def hub_stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny Mistral per Hub id named in the examples, the base first."""
    hub_ids = set().union(
        *(_hub_ids(yaml.safe_load((EXAMPLES / f"{n}.yaml").read_text())) for n in EXAMPLE_NAMES)
    )
    assert BASE_ID in hub_ids
    ordered = [BASE_ID, *sorted(hub_ids - {BASE_ID})]
    root = tmp_path_factory.mktemp("hub")
    paths = make_mistral_family(
        root,
        n_models=len(ordered),
        names=[hub_id.replace("/", "--") for hub_id in ordered],
        num_hidden_layers=TINY_LAYERS,
        num_key_value_heads=1,  # grouped-query attention, as in Mistral-7B
    )
    return dict(zip(ordered, paths, strict=True))


def test_examples_name_existing_style_hub_ids():
    for name in EXAMPLE_NAMES:
        doc = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
        ids = _hub_ids(doc)
        assert ids, name
        assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", i) for i in ids), ids


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_config_merges(name: str, hub_stand_ins: dict[str, Path], tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergesearch.search.cli import main

    doc = _rewrite(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()), hub_stand_ins)
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"

    argv = ["merge", str(config), str(out), "--seed", "0", "--threads", "1", "--no-progress"]
    assert main(argv) == 0

    n_layers = _expected_layers(doc)
    merged = load_state(out)
    assert set(merged) == _expected_names(load_state(hub_stand_ins[BASE_ID]), n_layers)
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}  # the configs' dtype

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.num_hidden_layers == n_layers
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model(**tokenizer("merge me", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
