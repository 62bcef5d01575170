"""Karcher mean: the Riemannian centre of N models on the hypersphere, found iteratively.

Every listed model counts, the base included (added when not listed), with equal weight
``1/N``; each tensor is one flat vector.

    u_i = x_i / |x_i|; only models with |x_i| > tol take part ("valid"), their weights
          renormalised; none valid: the result is zero
    m   = sum a_i u_i, then m / |m|  (|m| < tol: the first valid u_i)
    repeat max_iter times:
        theta_i = arccos(clamp(m . u_i, -1, 1))
        T = sum over theta_i >= tol of a_i theta_i / sin(theta_i) (u_i - (m . u_i) m)
        stop when |T| < tol
        m = cos|T| m + sin|T| T / |T|, then m / |m| when |m| > tol
    result = (sum_i |x_i| / N) m

Every vector above is a combination of the ``x_i``: the iteration runs on their Gram matrix
(an N x N float64 problem) and the data are read twice, whatever ``max_iter`` is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.base import BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws


def karcher_coefficients(g: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """Coefficients ``c`` with ``result = sum c_i x_i``, from the Gram matrix of the ``x_i``."""
    n = g.shape[0]
    norms = g.diagonal().clamp(min=0).sqrt()
    valid = [i for i in range(n) if float(norms[i]) > tol]
    if not valid:
        return torch.zeros(n, dtype=torch.float64)
    alpha = 1.0 / len(valid)
    eye = torch.eye(n, dtype=torch.float64)
    units = [eye[i] / norms[i] for i in valid]  # u_i as coefficients over the x_i

    mean = sum((alpha * u for u in units), torch.zeros(n, dtype=torch.float64))
    length = P.span_norm(mean, g)
    mean = units[0].clone() if length < tol else mean / length
    for _ in range(max_iter):
        cosines = (g @ mean)[valid] / norms[valid]  # m . u_i
        tangent = torch.zeros(n, dtype=torch.float64)
        for u, cos in zip(units, cosines.clamp(-1.0, 1.0).tolist(), strict=True):
            theta = math.acos(cos)
            if theta < tol:
                continue
            tangent += alpha * (theta / math.sin(theta)) * (u - cos * mean)
        step = P.span_norm(tangent, g)
        if step < tol:
            break
        mean = math.cos(step) * mean + math.sin(step) * (tangent / step)
        length = P.span_norm(mean, g)
        if length > tol:
            mean = mean / length
    return float(norms.sum()) / n * mean


def karcher(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    max_iter = float(params["max_iter"])
    if max_iter < 0 or max_iter != int(max_iter):
        raise ConfigError(
            f"karcher: max_iter must be a whole number >= 0, got {params['max_iter']} "
            "(in a search spec, give its range a step: 1)"
        )
    if len(inputs) == 1:
        return inputs[0]
    g = P.gram(inputs)
    coefficients = karcher_coefficients(g, int(max_iter), float(params["tol"]))
    return P.combine(inputs, coefficients.tolist())


register(
    MergeMethod(
        name="karcher",
        fn=karcher,
        base=BaseRole.IGNORED,
        global_params={"max_iter": 10, "tol": 1e-5},
        min_inputs=1,
        description="Riemannian (Karcher) mean of the models on the hypersphere, equal weights",
        flat_blocks=True,  # the Gram pass and the combination read flat blocks only
        paper="https://arxiv.org/abs/2603.04972",
    )
)
