"""Reinforced Agent Merging: average each element over the models that changed it.

    d_i = x_i - b;  active_i = |d_i| > epsilon;  c = number of active models per element
    ram:        result = b + sum_i active_i d_i / max(c, 1)
                (an element changed by one model keeps that change whole, shared ones average)
    ramplus_tl: model i's unique changes (c = 1) are scaled by
                lambda_i = 1 + r * clamp(shared_i / max(unique_i, epsilon), 0, alpha)
                where shared_i / unique_i count model i's active elements with c > 1 / c = 1
                in this tensor ("tensor-local"); shared elements average as in ram

Two passes over blocks for ramplus_tl (count, then merge), one for ram.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mergesearch.merging import buffers
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import sparsifiers as SP
from mergesearch.merging.methods.base import BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.methods.selection import blocks


def _active(deltas: list[SP.Delta], sl: slice, epsilon: float):
    """The block's task vectors (zeroed where inactive), activity masks and active counts."""
    acc = P.accumulation_dtype(deltas[0].b.dtype)
    ds = [d.block(sl).to(acc) for d in deltas]
    active = [d.abs() > epsilon for d in ds]
    count = active[0].to(torch.int8 if len(ds) < 128 else torch.int32)
    for a in active[1:]:
        count = count + a
    return [d.mul_(a) for d, a in zip(ds, active, strict=True)], active, count


def unique_scales(deltas: list[SP.Delta], epsilon: float, r: float, alpha: float) -> list[float]:
    """ramplus_tl's ``lambda_i`` from model i's shared and unique active elements."""
    shared = [0] * len(deltas)
    unique = [0] * len(deltas)
    for sl in blocks(deltas[0].numel):
        _, active, count = _active(deltas, sl, epsilon)
        alone, together = count == 1, count > 1
        for i, a in enumerate(active):
            shared[i] += int(torch.count_nonzero(a & together))
            unique[i] += int(torch.count_nonzero(a & alone))
    return [
        1.0 + r * min(max(s / max(u, epsilon), 0.0), alpha)
        for s, u in zip(shared, unique, strict=True)
    ]


def disjoint_merge(
    inputs: list[torch.Tensor], base: torch.Tensor, epsilon: float, scales: Sequence[float]
) -> torch.Tensor:
    """``b + sum_i active d_i * (scale_i where c = 1, 1 / c where c > 1)``, block by block."""
    b = base.detach().reshape(-1)
    deltas = [SP.Delta(x.detach().reshape(-1), b, tuple(base.shape)) for x in inputs]
    out = buffers.empty_like(b, reuse=b)  # each b[sl] is read before out[sl] is written
    for sl in blocks(b.numel()):
        ds, _, count = _active(deltas, sl, epsilon)
        alone = count == 1
        share = count.clamp(min=1).to(ds[0].dtype)
        mixed = None
        for d, scale in zip(ds, scales, strict=True):
            term = torch.where(alone, d * scale if scale != 1.0 else d, d / share)
            mixed = term if mixed is None else mixed.add_(term)
        assert mixed is not None
        torch.add(b[sl], mixed, out=out[sl])
    return out.reshape(base.shape)


def _checked(base: torch.Tensor | None, name: str) -> torch.Tensor:
    if base is None:
        raise ConfigError(f"{name} needs base_model: task vectors are x_i - base")
    return base


def ram(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    base = _checked(base, "ram")
    if not inputs:
        return base
    return disjoint_merge(inputs, base, float(params["epsilon"]), [1.0] * len(inputs))


def ramplus_tl(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    base = _checked(base, "ramplus_tl")
    if not inputs:
        return base
    epsilon = float(params["epsilon"])
    b = base.detach().reshape(-1)
    deltas = [SP.Delta(x.detach().reshape(-1), b, tuple(base.shape)) for x in inputs]
    scales = unique_scales(deltas, epsilon, float(params["r"]), float(params["alpha"]))
    return disjoint_merge(inputs, base, epsilon, scales)


PAPER = "https://arxiv.org/abs/2601.13572"
register(
    MergeMethod(
        name="ram",
        fn=ram,
        base=BaseRole.REQUIRED,
        global_params={"epsilon": 1e-5},
        min_inputs=0,
        elementwise=True,
        result_in_base=True,
        description="average each element over the models that changed it by more than epsilon",
        paper=PAPER,
    )
)
register(
    MergeMethod(
        name="ramplus_tl",
        fn=ramplus_tl,
        base=BaseRole.REQUIRED,
        global_params={"r": 0.1, "alpha": 0.2, "epsilon": 1e-5},
        min_inputs=0,
        result_in_base=True,
        description="ram with each model's unique changes scaled up by its overlap ratio",
        flat_blocks=True,  # the count and the merge read flat blocks only
        paper=PAPER,
    )
)
