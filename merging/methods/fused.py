"""The task-arithmetic family's hot loops compiled (numba), for bfloat16 inputs.

Why: in torch the family's per-block pass is a dozen elementwise ops per model and block
(subtract, upcast, mask, rescale, weight, elect, clamp, count, divide, add, round), each a trip
through memory and a hand-off of the GIL between the merge workers. Measured on one core at
Mistral-7B width (14336 x 4096, base + 3): that pass went from 6.5 to 2.3 ns per element as one
loop over cache-sized chunks, the L1 sums of DARE's rescale from 4.0 to 2.3, and DELLA's mask
pass (rank per row, draw, keep, sum) from 10.3 to 7.1 ns per element of each model, to
3.2-4.0 with a counting rank and integer draws, and to 2.7 counting only the pattern groups
that occur. Every loop runs without the GIL.

The loops are the torch ops step for step and give their results bit for bit
(``tests/merging/test_fused.py`` holds them to that): the task vector is rounded to bfloat16 as
torch's subtraction rounds it, every product and sum is float32 in the torch pass's order, NaN
goes where torch's clamp and threshold send it, the result is rounded to bfloat16 to
nearest-even, DELLA's rows are ranked as a stable sort ranks them. Only the L1 sums (float64 in
both) may add in another order. Other dtypes, and every dtype when numba is not installed or
``MERGESEARCH_FUSED=0``, take the torch ops.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from mergesearch.merging.methods.compiled import CHUNK, bits, jit, numba

if numba is not None:
    from mergesearch.merging.methods.compiled import (
        copysign,
        magnitude_pattern,
        narrow,
        task_vector,
        widen,
        widen_into,
    )


# DELLA's rank: patterns are counted in groups of 2**6 (4 and 5 bits measured slower, 7 too)
_GROUP_BITS = 6


class BlockKeep(NamedTuple):
    """What a keep rule keeps of one block, in the form the loop reads: a 0/1 byte per entry
    (``mask``), or ``|d| > cut`` and, with ``below``, also ``|d| < below``; all None: keep all."""

    mask: np.ndarray | None = None
    cut: float | None = None
    below: float | None = None


if numba is not None:

    @numba.njit(inline="always")
    def _kept(d, mask, j, mode, cut, below):
        """Entry ``j`` of the task vector under the block's rule: 0 keep, 1 times the 0/1
        ``mask[j]``, 2 ``|d| > cut`` (torch.threshold: NaN stays), 3 also ``|d| < below``."""
        if mode == 1:
            return d * np.float32(mask[j])
        if mode >= 2:
            kept = copysign(d, np.float32(1.0))
            kept = np.float32(0.0) if kept <= cut else kept
            if mode == 3:
                kept = np.float32(0.0) if kept >= below else kept
            return copysign(kept, d)
        return d

    @jit()
    def _term(x, b32, mask, mode, cut, below, scale, weight, term):
        """``D_i`` of one chunk into ``term``: kept ``x - b``, rescaled, weighted."""
        for j in range(term.shape[0]):
            d = _kept(task_vector(x[j], b32[j]), mask, j, mode, cut, below)
            if scale != 1:
                d = d * scale
            term[j] = d * weight

    @jit()
    def _task_block(base, models, masks, modes, cuts, belows, scales, weights, flags, out):
        """One block of the family's result; ``flags`` = (consensus, normalize, divisor floor
        or NaN for "zeros become 1", plain divisor, lambda)."""
        consensus, normalize = flags[0] != 0, flags[1] != 0
        floor, plain, lam = flags[2], flags[3], flags[4]
        k, n = len(models), base.shape[0]
        b32 = np.empty(CHUNK, np.float32)
        terms = np.empty((k, CHUNK), np.float32)
        total = np.empty(CHUNK, np.float32)
        divisor = np.empty(CHUNK, np.float32)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            bc, oc = base[c0 : c0 + m], out[c0 : c0 + m]
            widen_into(bc, b32)
            for i in range(k):
                mask = masks[i][c0 : c0 + m] if modes[i] == 1 else masks[i]
                term = terms[i, :m]
                x = models[i][c0 : c0 + m]
                _term(x, b32, mask, modes[i], cuts[i], belows[i], scales[i], weights[i], term)
                for j in range(m):
                    total[j] = term[j] if i == 0 else total[j] + term[j]
            if consensus:
                _consensus(terms, total, divisor, weights, m, normalize, floor)
            for j in range(m):
                v = total[j]
                if normalize:
                    v = v / (divisor[j] if consensus else plain)
                if lam != 1:
                    v = v * lam
                oc[j] = narrow(v + b32[j])

    @jit(fastmath={"reassoc"})
    def _l1_block(base, models, masks, modes, cuts, belows, sums):
        """Add each model's ``sum |d|`` and ``sum |kept d|`` over the block to ``sums[i]``,
        in float64; the sums may be reordered (``reassoc``) so that they vectorize: an L1
        norm is a rescale factor, exact to float32 whatever the order."""
        k, n = len(models), base.shape[0]
        b32 = np.empty(CHUNK, np.float32)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            bc = base[c0 : c0 + m]
            widen_into(bc, b32)
            for i in range(k):
                mask = masks[i][c0 : c0 + m] if modes[i] == 1 else masks[i]
                x = models[i][c0 : c0 + m]
                total = chosen = 0.0
                for j in range(m):  # each d once: its magnitude and, kept, the chosen one
                    d = task_vector(x[j], b32[j])
                    total += abs(d)
                    chosen += abs(_kept(d, mask, j, modes[i], cuts[i], belows[i]))
                sums[i, 0] += total
                sums[i, 1] += chosen

    @jit(fastmath={"reassoc"})
    def _della_block(base, x, words, limits, keep, sums):
        """DELLA's keep mask of whole rows of ``width = len(limits)`` into ``keep`` (0/1 bytes):
        per row, ``|x - b|`` (bfloat16, as torch rounds it) ranked ascending, equal values by
        position, and entry ``j`` of rank ``r`` kept when its draw ``words[j] < limits[r]``
        (``draws.limits``: the same decision as ``uniform < probability``). Adds ``sum |d|``
        and ``sum |kept d|`` (float64, in an order the compiler may change: ``reassoc``) to
        ``sums``: the rescale needs no pass of its own.

        The rank is a counting sort over the 15-bit patterns: count each pattern, turn the
        counts into first ranks, then hand them out in position order, so equal values rank by
        position as a stable sort ranks them. Every pass but the counting reads the row in
        order (a radix sort scatters and gathers whole rows twice: 1.4-1.8x slower here at
        Mistral-7B width). A row's patterns are few but spread: a 4096-wide row of a
        fine-tune's task vector holds about 300 distinct ones between 0 (an unchanged weight)
        and its largest, 15,000 patterns apart. So the count also marks which groups of
        ``2**_GROUP_BITS`` patterns occur, and only those groups are turned into ranks and
        cleared again (2.7 against 3.9 ns an element, against every pattern of the range)."""
        width = limits.shape[0]
        keys = np.empty(width, np.uint16)
        first = np.zeros(1 << 15, np.int32)  # per pattern: its count, then its next rank
        occupied = np.zeros(1 << (15 - _GROUP_BITS), np.uint8)  # which groups occur
        total = chosen = 0.0
        for o in range(0, base.shape[0], width):
            br, xr = base[o : o + width], x[o : o + width]
            wr, kr = words[o : o + width], keep[o : o + width]
            lowest, highest = 0x7FFF, 0
            for j in range(width):
                key = magnitude_pattern(xr[j], br[j])
                keys[j] = key
                lowest = min(lowest, np.int64(key))
                highest = max(highest, np.int64(key))
                total += np.float64(widen(key))
            for j in range(width):
                first[keys[j]] += 1
                occupied[keys[j] >> _GROUP_BITS] = 1
            groups = range(lowest >> _GROUP_BITS, (highest >> _GROUP_BITS) + 1)
            start = 0
            for group in groups:  # counts -> the first rank of each pattern
                if occupied[group]:
                    for v in range(group << _GROUP_BITS, (group + 1) << _GROUP_BITS):
                        count = first[v]
                        first[v] = start
                        start += count
            for j in range(width):
                key = keys[j]
                rank = first[key]
                first[key] = rank + 1
                kept = np.uint8(1) if np.uint64(wr[j]) < limits[rank] else np.uint8(0)
                kr[j] = kept
                chosen += np.float64(widen(key)) * kept
            for group in groups:  # zero again for the next row
                if occupied[group]:
                    occupied[group] = 0
                    first[group << _GROUP_BITS : (group + 1) << _GROUP_BITS] = 0
        sums[0] += total
        sums[1] += chosen

    @numba.njit(inline="always")
    def _consensus(terms, total, divisor, weights, m, with_divisor, floor):
        """``total`` (the sum of the terms) becomes ``mixed``; ``divisor`` the agreeing
        weights, its zeros made harmless (``task_arithmetic._consensus_block``)."""
        k = terms.shape[0]
        for j in range(m):
            sign = copysign(np.float32(1.0), total[j])
            mixed = np.float32(0.0)
            count = np.float32(0.0)
            for i in range(k):
                agreeing = terms[i, j] * sign
                agreeing = np.float32(0.0) if agreeing < 0 else agreeing  # clamp keeps NaN
                mixed = agreeing if i == 0 else mixed + agreeing
                agrees = np.float32(1.0) if agreeing > 0 else np.float32(0.0)
                count = agrees * weights[i] if i == 0 else count + agrees * weights[i]
            total[j] = mixed * sign
            if with_divisor:
                if floor == floor:
                    count = floor if count < floor else count
                elif count == 0:
                    count = np.float32(1.0)
                divisor[j] = count


def _mode(keep: BlockKeep) -> int:
    """0 keep all, 1 a mask, 2 a cut, 3 a cut and a ceiling (``_kept``)."""
    if keep.mask is not None:
        return 1
    if keep.cut is None:
        return 0
    return 2 if keep.below is None else 3


def _rule_arrays(keeps: list[BlockKeep]) -> tuple:
    """The rules as the loops take them: masks (empty where none), modes, cuts, ceilings."""
    no_mask = np.empty(0, np.uint8)
    return (
        tuple(no_mask if k.mask is None else k.mask for k in keeps),
        np.array([_mode(k) for k in keeps], np.int8),
        np.array([np.nan if k.cut is None else k.cut for k in keeps], np.float32),
        np.array([np.nan if k.below is None else k.below for k in keeps], np.float32),
    )


def task_block(
    base: torch.Tensor,
    models: list[torch.Tensor],
    keeps: list[BlockKeep],
    scales: list[float],
    weights: list[float],
    flags: tuple[bool, bool, float | None, float, float],
    out: torch.Tensor,
) -> None:
    """Write one block of the family's result into ``out`` (bfloat16); ``flags`` =
    (consensus, normalize, divisor floor or None, plain divisor, lambda)."""
    consensus, normalize, floor, plain, lam = flags
    _task_block(
        bits(base),
        tuple(bits(x) for x in models),
        *_rule_arrays(keeps),
        np.array(scales, np.float32),
        np.array(weights, np.float32),
        np.array(
            [consensus, normalize, np.nan if floor is None else floor, plain, lam], np.float32
        ),
        bits(out),
    )


def l1_sums(
    base: torch.Tensor, models: list[torch.Tensor], keeps: list[BlockKeep], sums: np.ndarray
) -> None:
    """Add ``(sum |d_i|, sum |kept d_i|)`` of one block of each model to ``sums[i]`` (float64)."""
    _l1_block(bits(base), tuple(bits(x) for x in models), *_rule_arrays(keeps), sums)


def della_block(
    base: torch.Tensor,
    x: torch.Tensor,
    words: np.ndarray,
    limits: np.ndarray,
    sums: np.ndarray,
) -> np.ndarray:
    """DELLA's keep mask (0/1 bytes) of a block of whole rows, from the block's draws
    (``Draws.words``) and the per-rank limits (``draws.limits``), its L1 sums added to
    ``sums``."""
    keep = np.empty(base.numel(), np.uint8)
    _della_block(bits(base), bits(x), words, limits, keep, sums)
    return keep
