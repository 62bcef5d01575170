"""sce in bfloat16 as compiled loops (see ``compiled``): its variance score and its
erase-and-average pass.

In torch the variance is Welford's update in float64 over every model, a dozen ops per block,
and it is computed again on every pass that ranks or masks by it; the erase pass is a
subtraction, an upcast, a mask multiply, a clamp, a sign and two weighted sums per model, then
the vote, the division and the rounding. Compiled, each is one loop without the GIL, and both
give the torch ops' bits (``tests/merging/test_fused.py``). On one core at Mistral-7B width
(14336 x 4096, base + 3, ``select_topk: 0.5``) sce went from 26-28 to 11.3-11.6 ns an
element. The energies stay in torch (their sums are torch's cascade sums).
"""

from __future__ import annotations

import numpy as np
import torch

from mergesearch.merging.methods.compiled import CHUNK, bits, jit, numba

if numba is not None:
    from mergesearch.merging.methods.compiled import (
        copysign,
        narrow,
        task_vector,
        widen,
        widen_into,
    )

    @jit()
    def _sce_block(base, models, mask, masked, weights, floor, out):
        """``b + sum_i w_i M_i d_i / max(sum_i w_i M_i, floor)`` of one block, ``d_i`` masked
        by ``mask`` (0/1 bytes) when ``masked``; the sign is elected on the unweighted
        ``d_i`` (``sce._erase_block``)."""
        k, n = len(models), base.shape[0]
        b32 = np.empty(CHUNK, np.float32)
        terms = np.empty((k, CHUNK), np.float32)
        one = np.float32(1.0)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            bc, oc = base[c0 : c0 + m], out[c0 : c0 + m]
            widen_into(bc, b32)
            kept_here = mask[c0 : c0 + m] if masked else mask
            for i in range(k):
                x = models[i][c0 : c0 + m]
                for j in range(m):
                    d = task_vector(x[j], b32[j])
                    terms[i, j] = d * np.float32(kept_here[j]) if masked else d
            for j in range(m):
                total = terms[0, j]
                for i in range(1, k):
                    total = total + terms[i, j]
                sign = copysign(one, total)
                mixed = divisor = np.float32(0.0)
                for i in range(k):
                    kept = terms[i, j] * sign
                    kept = np.float32(0.0) if kept < 0 else kept  # clamp keeps NaN
                    agrees = one if kept > 0 else np.float32(0.0)
                    kept = kept * weights[i]
                    mixed = kept if i == 0 else mixed + kept
                    divisor = agrees * weights[i] if i == 0 else divisor + agrees * weights[i]
                mixed = mixed * sign
                divisor = floor if divisor < floor else divisor
                oc[j] = narrow(b32[j] + mixed / divisor)

    @jit()
    def _variance_block(base, models, out):
        """Per element, the population variance over the models of ``d_i`` (bfloat16 as torch
        rounds ``x_i - b``), by Welford's update in float64 as ``primitives.population_variance``
        does it, rounded to float32."""
        k = len(models)
        for j in range(base.shape[0]):
            b = widen(base[j])
            mean = np.float64(task_vector(models[0][j], b))
            m2 = 0.0
            for i in range(1, k):
                x = np.float64(task_vector(models[i][j], b))
                delta = x - mean
                mean = mean + delta / np.float64(i + 1)
                step = delta * (x - mean)
                m2 = step if i == 1 else m2 + step
            out[j] = np.float32(m2 / np.float64(k))


def variance_block(base: torch.Tensor, models: list[torch.Tensor]) -> torch.Tensor:
    """sce's variance score of a block (float32); strided blocks are copied contiguous."""
    out = np.empty(base.numel(), np.float32)
    models_bits = tuple(bits(x.contiguous()) for x in models)
    _variance_block(bits(base.contiguous()), models_bits, out)
    return torch.from_numpy(out)


def sce_block(
    base: torch.Tensor,
    models: list[torch.Tensor],
    mask: torch.Tensor | None,
    weights: list[float],
    floor: float,
    out: torch.Tensor,
) -> None:
    """One block of sce's result into ``out`` (bfloat16); ``mask``: the selection's 0/1 bytes
    for the block, None when every element is selected."""
    keep = mask.numpy() if mask is not None else np.empty(0, np.uint8)
    models_bits = tuple(bits(x) for x in models)
    factors = np.array(weights, np.float32)
    _sce_block(
        bits(base), models_bits, keep, mask is not None, factors, np.float32(floor), bits(out)
    )
