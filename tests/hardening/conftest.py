"""Broken inputs for the hardening tests, each built from a tiny Llama family in a second.

Every fixture here is made once per session: a good family (``base``, ``a``, ``b``), siblings
that differ in one way a user can get wrong (architecture, hidden size, vocabulary), damaged
checkpoints (missing shard, truncated file, NaN weights, no ``config.json``, a dtype the header
mislabels), a malicious pickle, and a finished study to point ``status``/``report``/``export``
at.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.hardening.helpers import write_malicious_pickle
from tests.helpers.fake_study import make_study
from tests.helpers.tiny_models import make_family, make_llama_family


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hardening-models")
    base, a, b = make_llama_family(root / "llama", n_models=3, seed=0)
    found = {"base": base, "a": a, "b": b}
    found["mistral"] = make_family(root / "mistral", "mistral", n_models=1, names=["m"])[0]
    found["wide"] = make_family(root / "wide", "llama", n_models=1, names=["w"], hidden_size=96)[0]
    found["vocab"] = make_family(root / "vocab", "llama", n_models=1, names=["v"], vocab_size=300)[
        0
    ]

    sharded = make_family(root / "sharded", "llama", n_models=1, names=["s"], max_shard_size="40KB")
    index = json.loads((sharded[0] / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    (sharded[0] / last).unlink()
    found["missing_shard"] = sharded[0]

    truncated = _copy(a, root / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) * 2 // 3])
    found["truncated"] = truncated

    nan = _copy(a, root / "nan")
    state = load_file(nan / "model.safetensors")
    state["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(state, nan / "model.safetensors", metadata={"format": "pt"})
    found["nan"] = nan

    no_config = _copy(a, root / "no_config")
    (no_config / "config.json").unlink()
    found["no_config"] = no_config

    pickled = _copy(a, root / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    found["pickled"] = pickled

    lying = _copy(a, root / "lying_dtype")
    _relabel(lying / "model.safetensors", "model.embed_tokens.weight", "I32")
    found["lying_dtype"] = lying
    return found


def _relabel(path: Path, tensor: str, dtype: str) -> None:
    """Change one tensor's dtype in a safetensors header, keeping its byte length: a float32
    tensor labelled I32 has exactly the size the header promises."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header[tensor]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= size
    path.write_bytes(data[:8] + text.ljust(size) + data[8 + size :])


@pytest.fixture(scope="session")
def malicious(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder whose only weights are a malicious pickle, the marker it would create)."""
    root = tmp_path_factory.mktemp("malicious")
    (folder,) = make_llama_family(root, n_models=1, seed=1)
    (folder / "model.safetensors").unlink()
    marker = root / "PWNED"
    write_malicious_pickle(folder, marker)
    return folder, marker


@pytest.fixture(scope="session")
def study(tmp_path_factory, models) -> Path:
    """The results folder of a finished (fake-scored) study named ``fake`` over ``models``."""
    root = tmp_path_factory.mktemp("hardening-study")
    sources = {"base": models["base"], "rev": models["a"], "up": models["b"]}
    _, results, _ = make_study(root, models=sources)
    return results
