"""Linear: a weighted sum of every listed model (a listed base is just one more input)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from merging.errors import ConfigError
from merging.methods.base import REQUIRED, BaseRole, MergeMethod, register
from merging.methods.primitives import weighted_sum


def linear(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: torch.Generator | None,
) -> torch.Tensor:
    weights = [float(p["weight"]) for p in per_model]
    merged = weighted_sum(inputs, weights)
    if params["normalize"]:
        total = sum(weights)
        if abs(total) < 1e-8:
            raise ConfigError(
                f"linear: weights sum to {total}, so normalize: true would divide by zero; "
                "change the weights or set normalize: false"
            )
        merged /= total
    return merged.to(inputs[0].dtype)


register(
    MergeMethod(
        name="linear",
        fn=linear,
        base=BaseRole.IGNORED,
        per_model_params={"weight": REQUIRED},
        global_params={"normalize": True},
        min_inputs=1,
        description="weighted average of the models (Model Soups)",
    )
)
