"""Tiny synthetic float32 checkpoints for merge tests: a base model and its "fine-tunes".

Every family member shares one architecture. Model 0 is the base (random init from ``seed``);
model ``i > 0`` is ``base + noise * std(tensor) * N(0, 1)`` drawn from its own seed, so task
vectors ``x_i - base`` are small, dense and of mixed sign, as after a real fine-tune (TIES then
sees genuine sign conflicts). Each directory holds safetensors weights, ``config.json`` and a
byte-level BPE tokenizer trained here, so nothing comes from the Hub.

    paths = make_llama_family(tmp_path, n_models=3, seed=0)
    paths = make_family(tmp_path, "gpt2", n_models=2)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

# Small enough to build in well under a second, large enough that every tensor kind exists
# (2 heads, GQA-free attention, gated MLP, norms) and top-k selections have thousands of entries.
# vocab_size covers the 256 byte tokens plus specials and a few merges of the tokenizer.
TINY_DIMS: dict[str, int] = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 288,
    "max_position_embeddings": 128,
}

ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox")

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "merge models by averaging their task vectors",
    "spherical interpolation keeps the norm of the weights",
    "trim elect sign and merge the disjoint mean",
    "0123456789 + - * / = ( ) [ ] { } , . ; :",
] * 20

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


@functools.lru_cache(maxsize=4)
def _train_tokenizer(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok.to_str()


def save_tokenizer(out_dir: Path, vocab_size: int = TINY_DIMS["vocab_size"]) -> None:
    """Write a byte-level BPE tokenizer of at most ``vocab_size`` tokens to ``out_dir``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_train_tokenizer(vocab_size))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    wrapped.save_pretrained(out_dir)


def make_config(arch: str = "llama", **overrides: Any) -> Any:
    """A transformers config of ``arch`` with the tiny dims; ``overrides`` use Llama names."""
    import transformers

    dims = {**TINY_DIMS, **overrides}
    tie = dims.pop("tie_word_embeddings", arch == "gpt2")
    # The tokenizer's specials are its first three ids; configs must not point past the vocab.
    # Another tokenizer (the demo's) passes its own ids.
    defaults = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
    special_ids = {key: dims.pop(key, value) for key, value in defaults.items()}
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_embd=dims["hidden_size"],
            n_layer=dims["num_hidden_layers"],
            n_head=dims["num_attention_heads"],
            n_inner=dims["intermediate_size"],
            vocab_size=dims["vocab_size"],
            n_positions=dims["max_position_embeddings"],
            tie_word_embeddings=tie,
            **special_ids,
        )
    config_cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "gpt_neox": transformers.GPTNeoXConfig,
    }[arch]
    if arch != "gpt_neox":
        # Library defaults differ (Mistral: 8 KV heads, Qwen2: 32); pin plain multi-head
        # attention unless the caller asks for grouped-query attention.
        dims.setdefault("num_key_value_heads", dims["num_attention_heads"])
    return config_cls(**dims, tie_word_embeddings=tie, **special_ids)


def _model_class(arch: str) -> Any:
    import transformers

    return {
        "llama": transformers.LlamaForCausalLM,
        "mistral": transformers.MistralForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "gpt2": transformers.GPT2LMHeadModel,
        "gpt_neox": transformers.GPTNeoXForCausalLM,
    }[arch]


def quantize_(state: dict[str, torch.Tensor], grid: int) -> None:
    """Round every float tensor to a multiple of ``2**-grid``, in place."""
    step = 2.0**-grid
    for tensor in state.values():
        if tensor.is_floating_point():
            tensor.copy_(torch.round(tensor / step) * step)


def perturb_(
    state: dict[str, torch.Tensor], noise: float, seed: int, grid: int | None = None
) -> None:
    """Add ``noise * std(t) * N(0, 1)`` to each float tensor, in place; constant tensors
    (norm weights are all ones) get ``noise * N(0, 1)``. With ``grid`` the perturbation is
    rounded to a multiple of ``2**-grid``."""
    gen = torch.Generator().manual_seed(seed)
    for name in sorted(state):
        tensor = state[name]
        if not tensor.is_floating_point():
            continue
        scale = tensor.float().std().item() if tensor.numel() > 1 else 0.0
        scale = scale if scale > 0 else 1.0
        delta = torch.randn(tensor.shape, generator=gen, dtype=torch.float32) * (noise * scale)
        if grid is not None:
            delta = torch.round(delta * 2.0**grid) * 2.0**-grid
        tensor.add_(delta.to(tensor.dtype))


def make_family(
    root: Path | str,
    arch: str = "llama",
    n_models: int = 3,
    seed: int = 0,
    noise: float = 0.05,
    max_shard_size: str | None = None,
    names: list[str] | None = None,
    grid: int | None = None,
    **config: Any,
) -> list[Path]:
    """Write ``n_models`` checkpoints under ``root`` (``model_0`` is the base) and return paths.

    ``config`` overrides ``TINY_DIMS`` (Llama names, also ``tie_word_embeddings``). With
    ``max_shard_size`` (e.g. ``"20KB"``) the weights are split into shards plus an index.
    With ``grid`` (e.g. 14) every weight and every perturbation is a multiple of ``2**-grid``:
    ``x - base`` is then exact and takes few distinct values, as in bf16 fine-tunes, so equal
    magnitudes at a top-k cut-off become common (use it to exercise tie handling).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHITECTURES}")
    root = Path(root)
    names = names or [f"model_{i}" for i in range(n_models)]
    if len(names) != n_models:
        raise ValueError(f"{len(names)} names for {n_models} models")
    cfg = make_config(arch, **config)
    torch.manual_seed(seed)
    base = _model_class(arch)(cfg).to(torch.float32).eval()
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    if grid is not None:
        quantize_(base_state, grid)

    paths = []
    for i, name in enumerate(names):
        out = root / name
        state = {k: v.clone() for k, v in base_state.items()}
        if i > 0:
            perturb_(state, noise, seed=seed * 1000 + i, grid=grid)
        base.load_state_dict(state)
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        base.save_pretrained(out, **kwargs)
        save_tokenizer(out, vocab_size=cfg.vocab_size)
        paths.append(out)
    return paths


def make_llama_family(
    root: Path | str, n_models: int = 3, seed: int = 0, **config: Any
) -> list[Path]:
    return make_family(root, "llama", n_models=n_models, seed=seed, **config)


def make_mistral_family(
    root: Path | str, n_models: int = 3, seed: int = 0, **config: Any
) -> list[Path]:
    return make_family(root, "mistral", n_models=n_models, seed=seed, **config)


def make_gpt2_family(
    root: Path | str, n_models: int = 3, seed: int = 0, **config: Any
) -> list[Path]:
    return make_family(root, "gpt2", n_models=n_models, seed=seed, **config)


def make_gpt_neox_family(
    root: Path | str, n_models: int = 3, seed: int = 0, **config: Any
) -> list[Path]:
    return make_family(root, "gpt_neox", n_models=n_models, seed=seed, **config)


# The search tests' sources: smaller still, since a search merges them dozens of times per test.
SEARCH_DIMS: dict[str, int] = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 259,
    "max_position_embeddings": 64,
}


def make_named_family(root: Path | str, names: tuple[str, ...] = ("a", "b")) -> dict[str, str]:
    """A search's sources: ``base`` plus one "fine-tune" per name (each tensor of the base plus
    ``0.1 * std * N(0, 1)``), as path strings by name, ready for a spec's ``sources``."""
    from transformers import LlamaForCausalLM

    root = Path(root)
    config = make_config("llama", **SEARCH_DIMS, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    paths = {"base": str(root / "base")}
    base.save_pretrained(paths["base"])
    save_tokenizer(Path(paths["base"]), vocab_size=config.vocab_size)
    for i, name in enumerate(names, start=1):
        model = LlamaForCausalLM(config)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for (_, p), (_, b) in zip(
                model.named_parameters(), base.named_parameters(), strict=True
            ):
                p.copy_(b + 0.1 * b.std() * torch.randn(b.shape, generator=gen))
        paths[name] = str(root / name)
        model.save_pretrained(paths[name])
        save_tokenizer(Path(paths[name]), vocab_size=config.vocab_size)
    return paths


def load_state(model_dir: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint (sharded or not), by name."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors
