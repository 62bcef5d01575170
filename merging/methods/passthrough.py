"""Passthrough: copy the single input tensor, optionally scaled (layer stacking, frankenmerges)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods.base import BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws


def passthrough(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    if len(inputs) != 1:
        raise ConfigError(f"passthrough takes exactly one model per tensor, got {len(inputs)}")
    scale = per_model[0].get("scale")
    if scale is None:
        return inputs[0]
    return inputs[0] * float(scale)


register(
    MergeMethod(
        name="passthrough",
        fn=passthrough,
        base=BaseRole.IGNORED,
        per_model_params={"scale": None},
        min_inputs=1,
        max_inputs=1,
        description="layers copied as they are (times scale when given), slices stacked",
        stacks_layers=True,
        elementwise=True,
    )
)
