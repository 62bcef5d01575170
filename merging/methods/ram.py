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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mergesearch.merging import buffers
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import compiled, fused_ram
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import sparsifiers as SP
from mergesearch.merging.methods.base import BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.methods.selection import blocks


def _active(deltas: list[SP.Delta], sl: slice, epsilon: float):
    """The block's task vectors, their magnitudes zeroed where inactive, and the 0/1 activity
    of each model, all float.

    Float arithmetic instead of bool masks (``threshold`` keeps ``|d| > epsilon``, its sign
    is the activity): on CPU a bool mask costs several times a float op per element, and this
    block is all of ram's time. A negative ``epsilon`` makes every element active, zeros too.
    """
    acc = P.accumulation_dtype(deltas[0].b.dtype)
    ds = [d.block(sl).to(acc) for d in deltas]
    kept = [torch.threshold(d.abs(), epsilon, 0.0) for d in ds]
    active = [torch.sign(k) if epsilon >= 0 else torch.ones_like(k) for k in kept]
    return ds, kept, active


def _count(active: list[torch.Tensor]) -> torch.Tensor:
    """How many models are active at each element (float; exact: small integers)."""
    count = active[0].clone()
    for a in active[1:]:
        count.add_(a)
    return count


def _active_counts(deltas: list[SP.Delta], epsilon: float) -> tuple[list[int], list[int]]:
    """Per model: how many elements it changes (active), and at how many it alone does."""
    b = deltas[0].b
    if compiled.applies_to(b, *(d.x for d in deltas)):
        totals, uniques = np.zeros(len(deltas), np.int64), np.zeros(len(deltas), np.int64)
        for sl in blocks(deltas[0].numel):
            fused_ram.ram_counts(b[sl], [d.x[sl] for d in deltas], epsilon, totals, uniques)
        return totals.tolist(), uniques.tolist()
    total = [0] * len(deltas)
    unique = [0] * len(deltas)
    for sl in blocks(deltas[0].numel):
        _, _, active = _active(deltas, sl, epsilon)
        alone = _count(active).eq_(1)  # 1.0 where one model is active
        for i, a in enumerate(active):  # sums of 0/1 floats: exact below 2**24 (a block)
            total[i] += int(a.sum())
            unique[i] += int(P.dot(a, alone))
    return total, unique


def unique_scales(deltas: list[SP.Delta], epsilon: float, r: float, alpha: float) -> list[float]:
    """ramplus_tl's ``lambda_i`` from model i's shared and unique active elements."""
    total, unique = _active_counts(deltas, epsilon)
    shared = [t - u for t, u in zip(total, unique, strict=True)]
    return [
        1.0 + r * min(max(_overlap(s, u, epsilon), 0.0), alpha)
        for s, u in zip(shared, unique, strict=True)
    ]


def _overlap(shared: int, unique: int, epsilon: float) -> float:
    """``shared / max(unique, epsilon)``; with ``epsilon`` 0 and no unique element, a model
    that shares changes has infinite overlap (clamped to ``alpha``), one with none has 0."""
    denominator = max(unique, epsilon)
    if denominator > 0:
        return shared / denominator
    return math.inf if shared > 0 else 0.0


def disjoint_merge(
    inputs: list[torch.Tensor], base: torch.Tensor, epsilon: float, scales: Sequence[float]
) -> torch.Tensor:
    """``b + sum_i active d_i * (scale_i where c = 1, 1 / c where c > 1)``, block by block.

    Each active ``d_i`` is divided by ``max(c, 1)``; where one model alone is active the sum
    is that model's ``d_j``, which one multiply by ``sum_i active_i scale_i`` (that is
    ``scale_j`` there, exactly) scales, instead of a select per model.
    """
    b = base.detach().reshape(-1)
    deltas = [SP.Delta(x.detach().reshape(-1), b, tuple(base.shape)) for x in inputs]
    out = buffers.empty_like(b, reuse=b)  # each b[sl] is read before out[sl] is written
    if compiled.applies_to(b, out, *(d.x for d in deltas)):
        for sl in blocks(b.numel()):
            fused_ram.ram_block(b[sl], [d.x[sl] for d in deltas], epsilon, list(scales), out[sl])
        return out.reshape(base.shape)
    scaled = any(s != 1.0 for s in scales)
    for sl in blocks(b.numel()):
        ds, kept, active = _active(deltas, sl, epsilon)
        count = _count(active)
        unique_scale = None
        if scaled:  # sum_i active_i scale_i, then 1 wherever c != 1
            unique_scale = torch.zeros_like(count)
            for a, scale in zip(active, scales, strict=True):
                unique_scale.add_(a, alpha=scale)
            unique_scale = torch.where(count == 1, unique_scale, 1.0)
        share = count.clamp_(min=1)
        mixed = None
        for k, d in zip(kept, ds, strict=True):
            term = k.copysign_(d).div_(share)
            mixed = term if mixed is None else mixed.add_(term)
        assert mixed is not None
        if unique_scale is not None:
            mixed.mul_(unique_scale)
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
