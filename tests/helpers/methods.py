"""Calling a merge method as the engine does, and checking it against a float64 reference.

The method tests compare the fast torch code with plain numpy re-implementations of the math in
``docs/METHODS.md``: ``run`` fills in defaults as the planner would, ``f64`` and ``close`` compare
in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mergesearch.merging.methods import REQUIRED, get_method

ATOL = 1e-5


def run(
    name: str,
    inputs: list[torch.Tensor],
    base: torch.Tensor | None = None,
    per_model: list[Mapping[str, Any]] | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """Call the registered method ``name`` with every default the caller leaves out filled in."""
    method = get_method(name)
    per_model = per_model if per_model is not None else [{} for _ in inputs]
    pm_defaults = {k: v for k, v in method.per_model_params.items() if v is not REQUIRED}
    gl_defaults = {k: v for k, v in method.global_params.items() if v is not REQUIRED}
    filled = [{**pm_defaults, **p} for p in per_model]
    return method.fn(inputs, base, filled, {**gl_defaults, **params}, generator)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 1.0):
    """Standard normal values from their own seed, times ``scale``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().copy()


def close(actual: torch.Tensor, expected: np.ndarray, atol: float = ATOL) -> None:
    """Same shape, and every element within ``atol`` of the reference."""
    assert tuple(actual.shape) == expected.shape
    np.testing.assert_allclose(f64(actual), expected, rtol=0, atol=atol)
