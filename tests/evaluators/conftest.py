"""Tiny live models and the demo tokenizer, built here: nothing comes from the Hub."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.tiny_models import make_config

# Offline before anything imports the Hugging Face libraries; the evaluators force it too.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"


@pytest.fixture(scope="session")
def tokenizer():
    from mergesearch.search.demo.family import build_tokenizer

    return build_tokenizer()


def tiny_model(tokenizer, seed: int):
    """A 2-layer Llama with large random weights, so that greedy outputs differ by seed."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = make_config(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def model(tokenizer):
    torch.set_num_threads(1)
    return tiny_model(tokenizer, seed=0)
