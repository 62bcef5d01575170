"""ram and ramplus_tl in bfloat16 as compiled loops (see ``compiled``).

In torch each block costs a threshold, a sign, a count, a where, a copysign and a division per
model; measured on one core at Mistral-7B width (14336 x 4096, base + 3), ramplus_tl's counting
pass went from 3.7 to 1.7 ns an element and its merge pass from 10.5 to 1.7. The loops give
the torch ops' bits (``tests/merging/test_fused.py``), NaN, inf and ``|d| == epsilon``
included.
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
        widen_into,
    )

if numba is not None:

    @jit()
    def _ram_terms(x, b32, epsilon, all_active, kept, active):
        """One model's chunk: ``|d|`` thresholded at ``epsilon`` (torch.threshold: NaN stays),
        with ``d``'s sign back, and the 0/1 activity (its sign; every element when
        ``all_active``)."""
        one = np.float32(1.0)
        for j in range(kept.shape[0]):
            d = task_vector(x[j], b32[j])
            magnitude = copysign(d, one)
            magnitude = np.float32(0.0) if magnitude <= epsilon else magnitude
            active[j] = one if all_active or magnitude > 0 else np.float32(0.0)
            kept[j] = copysign(magnitude, d)

    @jit()
    def _ram_counts(base, models, epsilon, all_active, totals, uniques):
        """Add each model's active elements and those where it alone is active to ``totals[i]``
        and ``uniques[i]`` (ramplus_tl's counting pass)."""
        k, n = len(models), base.shape[0]
        b32 = np.empty(CHUNK, np.float32)
        kept = np.empty((k, CHUNK), np.float32)
        active = np.empty((k, CHUNK), np.float32)
        count = np.empty(CHUNK, np.float32)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            bc = base[c0 : c0 + m]
            widen_into(bc, b32)
            for i in range(k):
                x = models[i][c0 : c0 + m]
                _ram_terms(x, b32, epsilon, all_active, kept[i, :m], active[i, :m])
                for j in range(m):
                    count[j] = active[i, j] if i == 0 else count[j] + active[i, j]
            for i in range(k):
                total = unique = 0
                for j in range(m):
                    a = active[i, j] > 0
                    total += a
                    unique += a and count[j] == 1
                totals[i] += total
                uniques[i] += unique

    @jit()
    def _ram_block(base, models, epsilon, all_active, scales, out):
        """One block of ``b + sum_i kept_i / max(c, 1)``, the sum times ``scales[j]`` where model
        ``j`` alone is active (``ram.disjoint_merge``)."""
        k, n = len(models), base.shape[0]
        b32 = np.empty(CHUNK, np.float32)
        kept = np.empty((k, CHUNK), np.float32)
        active = np.empty((k, CHUNK), np.float32)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            bc, oc = base[c0 : c0 + m], out[c0 : c0 + m]
            widen_into(bc, b32)
            for i in range(k):
                x = models[i][c0 : c0 + m]
                _ram_terms(x, b32, epsilon, all_active, kept[i, :m], active[i, :m])
            for j in range(m):
                count = np.float32(0.0)
                unique_scale = np.float32(0.0)
                for i in range(k):
                    count = active[i, j] if i == 0 else count + active[i, j]
                    unique_scale = unique_scale + active[i, j] * scales[i]
                share = count if count > 1 else np.float32(1.0)
                mixed = np.float32(0.0)
                for i in range(k):
                    term = kept[i, j] / share
                    mixed = term if i == 0 else mixed + term
                if count == 1:
                    mixed = mixed * unique_scale
                oc[j] = narrow(b32[j] + mixed)


def ram_counts(
    base: torch.Tensor,
    models: list[torch.Tensor],
    epsilon: float,
    totals: np.ndarray,
    uniques: np.ndarray,
) -> None:
    """ramplus_tl's counts over one block, added to ``totals`` and ``uniques`` (int64)."""
    models_bits = tuple(bits(x) for x in models)
    _ram_counts(bits(base), models_bits, np.float32(epsilon), epsilon < 0, totals, uniques)


def ram_block(
    base: torch.Tensor,
    models: list[torch.Tensor],
    epsilon: float,
    scales: list[float],
    out: torch.Tensor,
) -> None:
    """One block of ram's (or ramplus_tl's) result into ``out`` (bfloat16)."""
    models_bits = tuple(bits(x) for x in models)
    factors = np.array(scales, np.float32)
    _ram_block(bits(base), models_bits, np.float32(epsilon), epsilon < 0, factors, bits(out))
