"""Spherical interpolation: ``slerp`` (base to one other model) and ``nuslerp`` (two models by
weight, optionally as task vectors over a base)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.base import REQUIRED, BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws


def slerp(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    if base is None:
        raise ConfigError("slerp needs base_model: it interpolates from the base (t=0)")
    return P.slerp(float(params["t"]), base, inputs[0])


def nuslerp(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    if len(inputs) != 2:
        raise ConfigError(f"nuslerp merges exactly two models besides the base, got {len(inputs)}")
    w0, w1 = (float(p["weight"]) for p in per_model)
    # Tiny weight sums make t explode; 0.5 is the arbitrary but sane choice mergekit makes.
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    flatten, row_wise = bool(params["nuslerp_flatten"]), bool(params["nuslerp_row_wise"])
    return P.nuslerp(t, inputs[0], inputs[1], flatten=flatten, row_wise=row_wise, origin=base)


register(
    MergeMethod(
        name="slerp",
        fn=slerp,
        base=BaseRole.REQUIRED,
        global_params={"t": REQUIRED},
        min_inputs=1,
        max_inputs=1,
        description="spherical interpolation from the base (t=0) to the other model (t=1)",
        paper="",  # Shoemake's quaternion slerp (SIGGRAPH 1985) has no arXiv version
        base_name="t=0 end",
        flat_blocks=True,  # the dot products and the combination read flat blocks only
    )
)


def _flattens(params: Mapping[str, Any]) -> bool:
    """nuslerp reads flat blocks only when it treats each tensor as one vector."""
    return bool(params["nuslerp_flatten"])


register(
    MergeMethod(
        name="nuslerp",
        fn=nuslerp,
        base=BaseRole.OPTIONAL,
        per_model_params={"weight": REQUIRED},
        global_params={"nuslerp_flatten": True, "nuslerp_row_wise": False},
        min_inputs=2,
        max_inputs=2,
        description=(
            "spherical interpolation of two models (or of their task vectors over the base) "
            "with t = w1 / (w0 + w1)"
        ),
        flat_blocks=_flattens,
    )
)
