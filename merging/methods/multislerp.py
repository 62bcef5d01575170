"""Multi-SLERP: a weighted barycentre of N models on the hypersphere (optionally of their task
vectors over a base).

    v_i = x_i - b (or x_i without a base), each tensor one flat vector; w normalised to sum 1
    u_i = v_i / (|v_i| + eps)                        unit vectors
    m   = sum w_i u_i, then m / |m|                  the Euclidean mean, back on the sphere
    t   = sum w_i (u_i - (u_i . m) m)                weighted tangent vectors at m
    r   = cos|t| m + sin|t| / |t| t                  exponential map back (|t| includes eps)
    result = (sum w_i |v_i|) r  (+ b)

Every vector above is a combination of the ``v_i``, so the method runs on their Gram matrix:
one pass for the dot products, one pass for the result (``primitives.gram``/``combine``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.base import REQUIRED, BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws


def multislerp_coefficients(g: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """Coefficients ``a`` with ``result = sum a_i v_i``, from the Gram matrix of the ``v_i``.

    Weighted unit vectors that cancel out (``|m| < eps``) leave no direction: two models then
    lerp (``a = w``), more are an error. Task vectors that are all zero give the base back.
    """
    norms = g.diagonal().clamp(min=0).sqrt()
    if bool((norms < eps).all()):  # no model moved this tensor (e.g. a layer no fine-tune
        return torch.zeros_like(weights)  # touched): the result is the base itself
    units = weights / (norms + eps)  # m = sum w_i u_i = sum (w_i / (|v_i| + eps)) v_i
    mean_norm = P.span_norm(units, g)
    if mean_norm < eps:
        if len(weights) == 2:  # two opposite directions: fall back to lerp of the v_i
            return weights.clone()
        raise ConfigError(
            "multislerp: the weighted unit vectors sum to zero (antipodal task vectors whose "
            "weights balance out); change the weights"
        )
    mean = units / mean_norm
    along = (g @ mean) / (norms + eps)  # u_i . m
    tangent = units - float(weights @ along) * mean
    size = P.span_norm(tangent, g) + eps
    on_sphere = math.cos(size) * mean + (math.sin(size) / size) * tangent
    return float(weights @ norms) * on_sphere


def multislerp(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    if len(inputs) == 1:
        return inputs[0]
    weights = torch.tensor([float(p["weight"]) for p in per_model], dtype=torch.float64)
    if params["normalize_weights"]:
        total = float(weights.sum())
        if abs(total) < 1e-8:
            raise ConfigError(
                f"multislerp: weights sum to {total}, so normalize_weights: true would divide "
                "by zero; change the weights or set normalize_weights: false"
            )
        weights = weights / total
    g = P.gram(inputs, base)
    coefficients = multislerp_coefficients(g, weights, float(params["eps"]))
    return P.combine(inputs, coefficients.tolist(), base)


register(
    MergeMethod(
        name="multislerp",
        fn=multislerp,
        base=BaseRole.OPTIONAL,
        per_model_params={"weight": REQUIRED},
        global_params={"normalize_weights": True, "eps": 1e-8},
        min_inputs=1,
        description="weighted spherical barycentre of N models (or of their task vectors)",
        flat_blocks=True,  # the Gram pass and the combination read flat blocks only
    )
)
