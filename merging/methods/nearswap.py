"""NearSwap: move the base toward the other model only where the two are already close.

    weight = clamp(t / max(|b - x|, 1e-6), 0, 1)     per element
    result = weight * x + (1 - weight) * b

Elements closer than ``t`` become the other model's, elements farther apart move by ``t``
(times a factor that shrinks with the distance): ``t = 0`` gives the base.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mergesearch.merging import buffers
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.base import REQUIRED, BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.methods.selection import blocks

DISTANCE_FLOOR = 1e-6


def nearswap_weight(b: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """How far each element moves from ``b`` toward ``x``: ``clamp(t / |b - x|, 0, 1)``."""
    distance = torch.sub(b, x).abs_().clamp_(min=DISTANCE_FLOOR)
    # t times the reciprocal, not t / distance: the rounding mergekit's ``t / tensor`` has
    return distance.reciprocal_().mul_(t).clamp_(0.0, 1.0)


def nearswap(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    b, x = P.base_and_other("nearswap", inputs, base)
    assert base is not None  # checked by base_and_other
    t = float(params["t"])
    acc = P.accumulation_dtype(base.dtype)
    out = buffers.empty_like(b, reuse=b)  # each b[sl] is read before out[sl] is written
    for sl in blocks(b.numel()):
        bb, xx = b[sl].to(acc), x[sl].to(acc)
        weight = nearswap_weight(bb, xx, t)
        out[sl] = torch.add(weight * xx, (1.0 - weight).mul_(bb))
    return out.reshape(base.shape)


register(
    MergeMethod(
        name="nearswap",
        fn=nearswap,
        base=BaseRole.REQUIRED,
        global_params={"t": REQUIRED},
        min_inputs=1,
        max_inputs=1,
        elementwise=True,
        result_in_base=True,
        description="interpolate toward the other model only where the two are close (t)",
    )
)
