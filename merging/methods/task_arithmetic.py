"""The task-arithmetic family: one algorithm, parameterised by a sparsifier and a consensus.

    d_i = x_i - b                           task vectors
    d_i = sparsify(d_i)                     per model, with its own density (and rescale)
    D_i = w_i d_i
    consensus:  M_i = sign(D_i) == sign(sum D)    mixed = sum M_i D_i    divisor = sum M_i w_i
    otherwise:  mixed = sum D_i                                        divisor = sum w_i
    result = b + lambda * (mixed / divisor if normalize else mixed)

Every YAML name below is that function with a different (sparsifier, consensus, defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch

from merging.errors import ConfigError
from merging.methods import primitives as P
from merging.methods.base import REQUIRED, BaseRole, MergeMethod, register

# (delta, that model's parameters, generator) -> keep mask; only called when density < 1.
MaskFn = Callable[[torch.Tensor, Mapping[str, Any], torch.Generator | None], torch.Tensor]


def _magnitude(d: torch.Tensor, p: Mapping[str, Any], g: torch.Generator | None) -> torch.Tensor:
    return P.magnitude_mask(d, float(p["density"]))


def _random(d: torch.Tensor, p: Mapping[str, Any], g: torch.Generator | None) -> torch.Tensor:
    return P.random_mask(d, float(p["density"]), g)


def _breadcrumbs(d: torch.Tensor, p: Mapping[str, Any], g: torch.Generator | None) -> torch.Tensor:
    return P.breadcrumbs_mask(d, float(p["density"]), float(p["gamma"]))


def _della(d: torch.Tensor, p: Mapping[str, Any], g: torch.Generator | None) -> torch.Tensor:
    return P.della_mask(d, float(p["density"]), float(p["epsilon"]), g)


def generalized_task_arithmetic(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: torch.Generator | None,
    *,
    mask_fn: MaskFn | None,
    consensus: bool,
) -> torch.Tensor:
    if base is None:
        raise ConfigError("the task-arithmetic family needs base_model: deltas are x_i - base")
    if not inputs:
        return base
    weights = [float(p["weight"]) for p in per_model]

    weighted = []
    for x, p, w in zip(inputs, per_model, weights, strict=True):
        d = x - base
        if mask_fn is not None and float(p["density"]) < 1:
            d = P.apply_mask(d, mask_fn(d, p, generator), bool(params["rescale"]))
        weighted.append(d.mul_(w))

    acc_dtype = P.accumulation_dtype(base.dtype)
    if consensus:
        masks = P.sign_consensus(weighted)
        mixed = torch.zeros(base.shape, dtype=acc_dtype, device=base.device)
        divisor = torch.zeros(base.shape, dtype=acc_dtype, device=base.device)
        for delta, mask, w in zip(weighted, masks, weights, strict=True):
            mixed += delta.masked_fill_(~mask, 0)  # delta is ours: x - base made above
            divisor.add_(mask.to(acc_dtype), alpha=w)
        divisor.masked_fill_(divisor == 0, 1)
    else:
        mixed = P.weighted_sum(weighted, [1.0] * len(weighted))
        total = sum(weights)
        divisor = total if abs(total) >= 1e-8 else 1.0
    del weighted

    if params["normalize"]:
        mixed /= divisor
    mixed *= float(params["lambda"])
    return (base + mixed).to(base.dtype)


def _register(
    name: str,
    mask_fn: MaskFn | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    description: str,
    extra_per_model: Mapping[str, Any] | None = None,
) -> None:
    register(
        MergeMethod(
            name=name,
            fn=partial(generalized_task_arithmetic, mask_fn=mask_fn, consensus=consensus),
            base=BaseRole.REQUIRED,
            per_model_params={"weight": REQUIRED, "density": 1.0, **(extra_per_model or {})},
            global_params={
                "normalize": normalize,
                "rescale": rescale,
                "lambda": 1.0,
                "int8_mask": False,  # accepted for mergekit compatibility; masks here are bool
            },
            min_inputs=0,  # with no other model the result is the base, as in mergekit
            uses_randomness=mask_fn in (_random, _della),
            description=description,
        )
    )


# task_arithmetic accepts density (and rescale) like mergekit but has no sparsifier to use them.
_register("task_arithmetic", None, False, False, False, "b + lambda * sum w_i (x_i - b)")
_register("ties", _magnitude, True, True, False, "magnitude pruning + sign consensus (TIES)")
_register("dare_linear", _random, False, False, True, "random drop + L1 rescale (DARE)")
_register("dare_ties", _random, True, False, True, "random drop + rescale + sign consensus")
_register(
    "breadcrumbs",
    _breadcrumbs,
    False,
    False,
    False,
    "drop smallest and largest-outlier deltas (Model Breadcrumbs)",
    {"gamma": 0.01},
)
_register(
    "breadcrumbs_ties",
    _breadcrumbs,
    True,
    False,
    False,
    "breadcrumbs + sign consensus",
    {"gamma": 0.01},
)
_register(
    "della",
    _della,
    True,
    True,
    True,
    "rank-based random drop + rescale + sign consensus (DELLA)",
    {"epsilon": 0.15},
)
_register(
    "della_linear",
    _della,
    False,
    False,
    True,
    "rank-based random drop + rescale (DELLA without consensus)",
    {"epsilon": 0.15},
)
