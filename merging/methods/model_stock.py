"""Model Stock: move from the base toward the models' average by an angle-derived ratio."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

import torch

from mergesearch.merging import buffers
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.base import BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.methods.primitives import dot
from mergesearch.merging.methods.selection import BLOCK, blocks


def mean_pairwise_cosine(offsets: list[torch.Tensor]) -> torch.Tensor:
    """Mean cosine over all pairs of vectors along the last dim (norm product clamped at 1e-6)."""
    pairs = list(combinations(range(len(offsets)), 2))
    dots = {(i, j): dot(offsets[i], offsets[j]) for i, j in [*pairs, *_squares(len(offsets))]}
    return _mean_cosine(dots, len(offsets))


def _squares(n: int) -> list[tuple[int, int]]:
    return [(i, i) for i in range(n)]


def _mean_cosine(dots: dict[tuple[int, int], torch.Tensor], n: int) -> torch.Tensor:
    norms = [dots[i, i].sqrt() for i in range(n)]
    cosines = [
        (dots[i, j] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1.0, 1.0)
        for i, j in combinations(range(n), 2)
    ]
    return torch.stack(cosines).mean(dim=0)


def _blockwise_dots(
    rows: list[torch.Tensor], b: torch.Tensor
) -> dict[tuple[int, int], torch.Tensor]:
    """Every dot product of the offsets ``x_i - b`` per row, over blocks of the flat data.

    One row (the whole tensor): partial sums per block, added in float64. Several rows (filter
    wise): blocks of whole rows. No offset of the full size is ever held.
    """
    n_rows, width = b.shape
    keys = [*combinations(range(len(rows)), 2), *_squares(len(rows))]
    acc = P.accumulation_dtype(b.dtype)
    if n_rows == 1:
        flat_b = b.reshape(-1)
        flats = [x.reshape(-1) for x in rows]
        sums = dict.fromkeys(keys, 0.0)
        for sl in blocks(width):
            offsets = [torch.sub(x[sl], flat_b[sl]).to(acc) for x in flats]
            for i, j in keys:
                sums[i, j] += float(dot(offsets[i], offsets[j]))
        return {k: torch.tensor([v], dtype=acc) for k, v in sums.items()}
    parts: dict[tuple[int, int], list[torch.Tensor]] = {k: [] for k in keys}
    step = max(1, BLOCK // width)
    for start in range(0, n_rows, step):
        offsets = [torch.sub(x[start : start + step], b[start : start + step]) for x in rows]
        for i, j in keys:
            parts[i, j].append(dot(offsets[i], offsets[j]))
    return {k: torch.cat(v) for k, v in parts.items()}


def model_stock(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    if base is None or len(inputs) < 2:
        raise ConfigError("model_stock needs base_model and at least two other models")
    # One vector per tensor, or one per row (last dim) with filter_wise; 1-D tensors are one row.
    width = base.shape[-1] if params["filter_wise"] and base.dim() >= 1 else base.numel()
    rows = [x.detach().reshape(-1, width) for x in inputs]
    b = base.detach().reshape(-1, width)
    n = len(inputs)
    cos = _mean_cosine(_blockwise_dots(rows, b), n)
    t = (n * cos) / (1 + (n - 1) * cos)
    # Unit offsets summing to zero make the denominator 0; stay at the base there.
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t)).unsqueeze(-1)
    out = buffers.empty_like(b, reuse=b)  # each block of b is read before it is written
    if t.shape[0] == 1:  # one ratio for the tensor: blocks of the flat data
        flat_out, flat_b, flats = out.reshape(-1), b.reshape(-1), [x.reshape(-1) for x in rows]
        ratio = t.reshape(1)
        for sl in blocks(flat_b.numel()):
            average = sum(x[sl] for x in flats) / n
            flat_out[sl] = ratio * average + (1 - ratio) * flat_b[sl]
    else:
        step = max(1, BLOCK // width)
        for start in range(0, b.shape[0], step):
            rs = slice(start, start + step)
            average = sum(x[rs] for x in rows) / n
            out[rs] = t[rs] * average + (1 - t[rs]) * b[rs]
    return out.reshape(base.shape)


register(
    MergeMethod(
        name="model_stock",
        fn=model_stock,
        base=BaseRole.REQUIRED,
        global_params={"filter_wise": False},
        min_inputs=2,
        result_in_base=True,
        description=(
            "interpolation from the base towards the models' average by the mean angle "
            "between their fine-tuning offsets (Model Stock)"
        ),
        paper="https://arxiv.org/abs/2403.19522",
    )
)
