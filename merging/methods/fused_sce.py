"""sce in bfloat16 as compiled loops (see ``compiled``): its variance score with the top-k's
band pass, the pass that marks the selection and sums the energies, and the erase-and-average
pass.

In torch the variance is Welford's update in float64 over every model, a dozen ops per block,
and it is computed again on every pass that ranks or masks by it; the erase pass is a
subtraction, an upcast, a mask multiply, a clamp, a sign and two weighted sums per model, then
the vote, the division and the rounding. Compiled, each is one loop without the GIL, and both
give the torch ops' bits (``tests/merging/test_fused.py``). On one core at Mistral-7B width
(14336 x 4096, base + 3, ``select_topk: 0.5``) sce went from 26-28 to 11.3-11.6 ns an
element. The pass between them, which marks the selection and sums each model's selected
energy, is a third loop: in torch it was a variance, a compare, a subtraction, an upcast, a
mask multiply and a dot product per model and block (10.5 -> 8.3 ns an element for all of
sce), and the top-k's band pass counts and gathers right after the variance instead of in
NumPy and torch (-> 7.9-8.1). Its energies are float64 sums in both paths, which may add in
another order (as the L1 sums of ``fused`` do): the float32 squares of 16-bit task vectors are
exact, so only that order differs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mergesearch.merging.methods.compiled import CHUNK, bits, jit, numba
from mergesearch.merging.methods.selection import BLOCK, TopK, blocks

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

    @numba.njit(inline="always")
    def _variance_at(base, models, j):
        """The population variance over the models of ``d_i`` at ``j`` (bfloat16 as torch
        rounds ``x_i - b``), by Welford's update in float64 as
        ``primitives.population_variance`` does it, rounded to float32."""
        k = len(models)
        b = widen(base[j])
        mean = np.float64(task_vector(models[0][j], b))
        m2 = 0.0
        for i in range(1, k):
            x = np.float64(task_vector(models[i][j], b))
            delta = x - mean
            mean = mean + delta / np.float64(i + 1)
            step = delta * (x - mean)
            m2 = step if i == 1 else m2 + step
        return np.float32(m2 / np.float64(k))

    @jit()
    def _variance_block(base, models, out):
        """Per element, sce's variance score (``_variance_at``): a loop on its own, which
        vectorizes (with a compare or a sum beside it, it runs several times slower)."""
        for j in range(base.shape[0]):
            out[j] = _variance_at(base, models, j)

    @jit()
    def _variance_band_block(base, models, lo, hi, band, counts, var):
        """The band pass of ``selection._band_pass`` over the variance: adds how many lie above
        ``hi`` and how many are nonzero (NaN is) to ``counts``, writes those in ``[lo, hi]`` to
        ``band`` and returns how many. The variances first (into ``var``), then the compares
        without a branch: every value is written and only those in the band advance, since a
        branch per element mispredicts wherever ``lo`` splits the values (8x slower here)."""
        _variance_block(base, models, var)
        inside = above = nonzero = 0
        for j in range(base.shape[0]):
            v = var[j]
            above += v > hi
            nonzero += v != 0
            band[inside] = v
            inside += (v >= lo) & (v <= hi)
        counts[0] += above
        counts[1] += nonzero
        return inside

    @jit()
    def _selected_energy_block(base, models, selecting, cut, ties_below, keep, sums):
        """With ``selecting``: ``keep[j]`` = the variance at ``j`` > ``cut``, or equal to it at
        ``j < ties_below`` (``TopK`` on this block; NaN is never kept); without, every entry
        is kept. Adds each model's ``sum (d_i * keep) ** 2`` to ``sums[i]`` (squares in float32,
        as torch's masked square: an infinite ``d_i`` dropped is NaN there too)."""
        n = base.shape[0]
        for j in range(n):  # the selection first: in one loop with the sums it runs 5x slower
            if selecting:
                v = _variance_at(base, models, j)
                keep[j] = np.uint8((v > cut) | ((v == cut) & (j < ties_below)))
            else:
                keep[j] = np.uint8(1)
        b32 = np.empty(CHUNK, np.float32)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            widen_into(base[c0 : c0 + m], b32)
            for i in range(len(models)):
                sums[i] += _masked_squares(models[i][c0 : c0 + m], b32, keep[c0 : c0 + m], m)

    @jit(fastmath={"reassoc"})
    def _masked_squares(x, b32, kept, m):
        """``sum (d * kept) ** 2`` over the first ``m`` entries (``kept``: 0/1 bytes), squared
        in float32 and summed in float64 in whatever order vectorizes (``reassoc``: a function
        of its own, so that the variance's steps keep their order)."""
        total = 0.0
        for j in range(m):
            d = task_vector(x[j], b32[j]) * np.float32(kept[j])
            total += np.float64(d * d)
        return total


def selected_energy_block(
    base: torch.Tensor,
    models: list[torch.Tensor],
    rule: TopK | None,
    start: int,
    sums: np.ndarray,
) -> np.ndarray:
    """The selection of the block that starts at flat index ``start`` as 0/1 bytes (all 1
    without a rule), each model's selected ``sum d_i ** 2`` added to ``sums[i]`` (float64)."""
    keep = np.empty(base.numel(), np.uint8)
    cut = -math.inf if rule is None else rule.value
    ties_below = 0 if rule is None else rule.tie_limit - start
    models_bits = tuple(bits(x) for x in models)
    _selected_energy_block(
        bits(base), models_bits, rule is not None, np.float32(cut), ties_below, keep, sums
    )
    return keep


def variance_band(
    base: torch.Tensor, models: list[torch.Tensor], lo: float, hi: float
) -> tuple[int, torch.Tensor, int]:
    """``selection.BandPass`` over sce's variance of the flat ``base`` and ``models`` (tensors
    or streamed sources, read block by block): one compiled pass, no variance block handed to
    NumPy's compares."""
    counts = np.zeros(2, np.int64)
    size = min(base.numel(), BLOCK)
    scratch, variances = np.empty(size, np.float32), np.empty(size, np.float32)
    parts = []
    for sl in blocks(base.numel()):
        length = sl.stop - sl.start
        inside = _variance_band_block(
            bits(base[sl]),
            tuple(bits(x[sl]) for x in models),
            np.float32(lo),
            np.float32(hi),
            scratch[:length],
            counts,
            variances[:length],
        )
        parts.append(scratch[:inside].copy())
    band = torch.from_numpy(np.concatenate(parts) if parts else scratch[:0].copy())
    return int(counts[0]), band, int(counts[1])


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
