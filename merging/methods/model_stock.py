"""Model Stock: move from the base toward the models' average by an angle-derived ratio."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

import torch

from merging.errors import ConfigError
from merging.methods.base import BaseRole, MergeMethod, register
from merging.methods.primitives import dot


def mean_pairwise_cosine(offsets: list[torch.Tensor]) -> torch.Tensor:
    """Mean cosine over all pairs of vectors along the last dim (norm product clamped at 1e-6)."""
    norms = [dot(o, o).sqrt() for o in offsets]
    cosines = [
        (dot(offsets[i], offsets[j]) / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1.0, 1.0)
        for i, j in combinations(range(len(offsets)), 2)
    ]
    return torch.stack(cosines).mean(dim=0)


def model_stock(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: torch.Generator | None,
) -> torch.Tensor:
    if base is None or len(inputs) < 2:
        raise ConfigError("model_stock needs base_model and at least two other models")
    # One vector per tensor, or one per row (last dim) with filter_wise; 1-D tensors are one row.
    width = base.shape[-1] if params["filter_wise"] and base.dim() >= 1 else base.numel()
    rows = [x.reshape(-1, width) for x in inputs]
    b = base.reshape(-1, width)
    cos = mean_pairwise_cosine([x - b for x in rows])
    n = len(inputs)
    t = (n * cos) / (1 + (n - 1) * cos)
    # Unit offsets summing to zero make the denominator 0; stay at the base there.
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t)).unsqueeze(-1)
    average = sum(rows) / n
    return (t * average + (1 - t) * b).reshape(base.shape).to(base.dtype)


register(
    MergeMethod(
        name="model_stock",
        fn=model_stock,
        base=BaseRole.REQUIRED,
        global_params={"filter_wise": False},
        min_inputs=2,
        description="interpolate base and average by the offsets' mean pairwise cosine",
    )
)
