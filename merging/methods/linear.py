"""Linear: a weighted sum of every listed model (a listed base is just one more input)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mergesearch.merging import buffers
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods.base import REQUIRED, BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.methods.primitives import weighted_sum
from mergesearch.merging.methods.selection import blocks


def linear(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    weights = [float(p["weight"]) for p in per_model]
    total = sum(weights)
    if params["normalize"] and abs(total) < 1e-8:
        raise ConfigError(
            f"linear: weights sum to {total}, so normalize: true would divide by zero; "
            "change the weights or set normalize: false"
        )
    flats = [x.detach().reshape(-1) for x in inputs]
    out = buffers.empty_like(flats[0])
    # block by block: the sum reads each input once and writes the output once
    for sl in blocks(out.numel()):
        merged = weighted_sum([x[sl] for x in flats], weights)
        if params["normalize"]:
            merged /= total
        out[sl] = merged
    return out.reshape(inputs[0].shape)


register(
    MergeMethod(
        name="linear",
        fn=linear,
        base=BaseRole.IGNORED,
        per_model_params={"weight": REQUIRED},
        global_params={"normalize": True},
        min_inputs=1,
        elementwise=True,
        description="a weighted average of the models' weights (Model Soups)",
        paper="https://arxiv.org/abs/2203.05482",
    )
)
