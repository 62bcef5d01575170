"""Which tensor belongs to which layer, and how names renumber when slices stack layers.

A layer index is the number right after a known layer container in the tensor name. Tensors
outside the layers are either before them (embeddings: taken from the first slice) or after them
(final norm, lm_head: taken from the last slice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LAYER_CONTAINERS = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi-3 ...
    "model.language_model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
_LAYER_RE = re.compile(
    r"^(?P<prefix>(?:" + "|".join(re.escape(c) for c in LAYER_CONTAINERS) + r"))\.(?P<idx>\d+)\."
)
# non-layer tensors that come before the layers; everything else non-layer comes after
_PRE_LAYER_MARKERS = ("embed", ".wte.", ".wpe.", "word_embeddings", "embed_in")

# config keys that hold the depth, in the order we look for them
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass(frozen=True)
class LayerName:
    prefix: str
    index: int
    suffix: str  # everything after "prefix.index."


def parse_layer_name(name: str) -> LayerName | None:
    """``LayerName`` for tensors inside a layer, ``None`` for embeddings, norms, heads."""
    match = _LAYER_RE.match(name)
    if match is None:
        return None
    return LayerName(match["prefix"], int(match["idx"]), name[match.end() :])


def is_pre_layer(name: str) -> bool:
    return any(marker in f".{name}." for marker in _PRE_LAYER_MARKERS)


def layer_suffixes(names: list[str], layer: int) -> list[tuple[str, str]]:
    """(prefix, suffix) of every tensor of one layer, in checkpoint order."""
    out = []
    for name in names:
        parsed = parse_layer_name(name)
        if parsed is not None and parsed.index == layer:
            out.append((parsed.prefix, parsed.suffix))
    return out
