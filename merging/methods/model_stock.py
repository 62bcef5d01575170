"""Model Stock: move from the base toward the models' average by an angle-derived ratio."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

import torch

from mergesearch.merging import buffers
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import compiled, fused_angles
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


def _flat_dots(
    flats: list[torch.Tensor], flat_b: torch.Tensor
) -> dict[tuple[int, int], torch.Tensor]:
    """Every dot product of the offsets ``x_i - b`` of whole flat tensors (``P.gram``, block by
    block, so no offset of the full size is ever held), in the accumulation dtype."""
    keys = [*combinations(range(len(flats)), 2), *_squares(len(flats))]
    acc = P.accumulation_dtype(flat_b.dtype)
    sums = P.gram(flats, flat_b, round_offsets=True)
    return {(i, j): sums[i, j].reshape(1).to(acc) for i, j in keys}


def _blockwise_dots(
    rows: list[torch.Tensor], b: torch.Tensor
) -> dict[tuple[int, int], torch.Tensor]:
    """Every dot product of the offsets ``x_i - b`` per row (filter wise), over blocks of
    whole rows. No offset of the full size is ever held."""
    keys = [*combinations(range(len(rows)), 2), *_squares(len(rows))]
    parts: dict[tuple[int, int], list[torch.Tensor]] = {k: [] for k in keys}
    step = max(1, BLOCK // b.shape[1])
    for start in range(0, b.shape[0], step):
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
    if not params["filter_wise"]:
        return _one_ratio(inputs, base)
    # One vector per row (last dim); a 1-D tensor is one row.
    width = base.shape[-1] if base.dim() >= 1 else base.numel()
    rows = [x.detach().reshape(-1, width) for x in inputs]
    b = base.detach().reshape(-1, width)
    if b.shape[0] == 1:
        return _one_ratio(inputs, base)
    t = _ratio(_blockwise_dots(rows, b), len(inputs))
    out = buffers.empty_like(b, reuse=b)  # each block of b is read before it is written
    step = max(1, BLOCK // width)
    for start in range(0, b.shape[0], step):
        rs = slice(start, start + step)
        average = sum(x[rs] for x in rows) / len(inputs)
        out[rs] = t[rs] * average + (1 - t[rs]) * b[rs]
    return out.reshape(base.shape)


def _ratio(dots: dict[tuple[int, int], torch.Tensor], n: int) -> torch.Tensor:
    """Model Stock's interpolation ratio per vector, as a column: ``n cos / (1 + (n - 1) cos)``."""
    cos = _mean_cosine(dots, n)
    t = (n * cos) / (1 + (n - 1) * cos)
    # Unit offsets summing to zero make the denominator 0; stay at the base there.
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t)).unsqueeze(-1)


def _one_ratio(inputs: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """The whole tensor as one vector: dot products and the result over flat blocks only, so
    the engine may stream the inputs (``MergeMethod.flat_blocks``)."""
    flat_b = base.detach().reshape(-1)
    flats = [x.detach().reshape(-1) for x in inputs]
    n = len(inputs)
    ratio = _ratio(_flat_dots(flats, flat_b), n).reshape(1)
    out = buffers.empty_like(flat_b, reuse=flat_b)  # each block of b is read before written
    fast = compiled.applies_to(flat_b, *flats)
    for sl in blocks(flat_b.numel()):
        if fast:
            fused_angles.stock_mix([x[sl] for x in flats], flat_b[sl], float(ratio), out[sl])
            continue
        average = sum(x[sl] for x in flats) / n
        out[sl] = ratio * average + (1 - ratio) * flat_b[sl]
    return out.reshape(base.shape)


def _one_vector(params: Mapping[str, Any]) -> bool:
    """Without filter_wise each tensor is one vector, read as flat blocks only."""
    return not params["filter_wise"]


register(
    MergeMethod(
        name="model_stock",
        fn=model_stock,
        base=BaseRole.REQUIRED,
        global_params={"filter_wise": False},
        min_inputs=2,
        result_in_base=True,
        flat_blocks=_one_vector,
        description=(
            "interpolation from the base towards the models' average by the mean angle "
            "between their fine-tuning offsets (Model Stock)"
        ),
        paper="https://arxiv.org/abs/2403.19522",
    )
)
