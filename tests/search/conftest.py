"""Tiny model families and specs for search tests: built in a second, nothing downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.search import probe
from tests.search.fake_study import shared_study

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=259,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["abc"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def build_family(
    root: Path, names: tuple[str, ...] = ("a", "b"), *, layers: int = 2, poison: str | None = None
) -> dict[str, str]:
    """``base`` plus one "fine-tune" per name (base + small noise); ``poison`` gets an inf."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=259,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    tokenizer = _tokenizer()
    base = LlamaForCausalLM(config)
    paths = {"base": str(root / "base")}
    base.save_pretrained(paths["base"])
    tokenizer.save_pretrained(paths["base"])
    for i, name in enumerate(names, start=1):
        model = LlamaForCausalLM(config)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for (_, p), (_, b) in zip(
                model.named_parameters(), base.named_parameters(), strict=True
            ):
                p.copy_(b + 0.1 * b.std() * torch.randn(b.shape, generator=gen))
            if name == poison:
                model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
        paths[name] = str(root / name)
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, str]:
    return build_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(autouse=True)
def _probe_reset():
    probe.reset()
    yield
    probe.reset()


def make_spec(paths: dict[str, str], tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A small valid spec over ``paths`` scored by the probe; ``changes`` replace keys."""
    spec: dict[str, Any] = {
        "name": "t",
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "sources": {
            "base": paths["base"],
            "models": {k: v for k, v in paths.items() if k != "base"},
        },
        "methods": ["ties", "linear"],
        "parameters": {
            "weight": {"low": 0.1, "high": 1.0},
            "density": {"low": 0.2, "high": 1.0},
            "lambda": {"low": 0.5, "high": 1.5},
        },
        "objectives": [
            {
                "name": "probe",
                "evaluator": "python",
                "metric": "probe/score",
                "options": {"callable": "tests.search.probe:score"},
                "splits": {"search": {}},
            }
        ],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": 8},
    }
    spec.update(changes)
    return spec


# finished studies on the tiny models (single-objective and Pareto), shared by the report and
# export tests


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return shared_study(tmp_path_factory)


@pytest.fixture(scope="module")
def pareto(tmp_path_factory):
    return shared_study(tmp_path_factory, pareto=True)
