"""Exact top-k of scores that are never held whole: a threshold plus a tie limit.

The merge methods score a task vector by ``|x - b|`` and keep its ``k`` largest entries. Holding
``|x - b|`` (and a bool mask) for a 131 MB embedding costs two more tensors of that size, and a
full ``kthvalue`` quick-selects all of it. Instead the scores are recomputed block by block
(``ScoreSource``): a strided sample brackets the answer, one pass counts what lies above the
bracket and collects what lies inside it, and ``kthvalue`` runs on that small band only. The
result, ``TopK``, is a rule that reproduces the exact mask for any block: keep scores above
``value``, and scores equal to ``value`` at flat indices below ``tie_limit`` (equal magnitudes
go lowest index first, a deterministic total order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

# Elements per block: 1 MiB of float32, so a block of every operand stays in cache while the
# dozen elementwise ops of a method run over it.
BLOCK = 1 << 18
# Sizes above which the threshold search samples first, and the sample size.
SAMPLE_MIN_NUMEL = 1 << 20
SAMPLE_SIZE = 1 << 16
# The 16-bit counting pass keeps one histogram per run of blocks, at most this many runs: the
# tie search then scans one run instead of up to the whole tensor, for at most 16 MiB of counts.
COUNT_RUNS = 64

# Flat scores for an index (a slice, possibly strided) into the flattened tensor.
ScoreSource = Callable[[slice], torch.Tensor]
# One pass over every score for the bracket ``(lo, hi)``: how many lie above ``hi``, those in
# ``[lo, hi]`` (float32), and how many are nonzero.
BandPass = Callable[[float, float], tuple[int, torch.Tensor, int]]


def blocks(n: int, block: int = BLOCK, start: int = 0) -> Iterator[slice]:
    """Consecutive slices covering ``range(start, n)``."""
    for first in range(start, n, block):
        yield slice(first, min(n, first + block))


@dataclass(frozen=True)
class TopK:
    """The rule "in the top k": ``score > value``, or ``score == value`` at index < ``tie_limit``.

    ``value = -inf`` with ``tie_limit = n`` keeps everything; ``value = inf`` with
    ``tie_limit = 0`` keeps nothing.
    """

    value: float
    tie_limit: int

    def cut(self, start: int, length: int) -> float | None:
        """``c`` with "in the top k" == ``score > c`` on the block ``[start, start + length)``;
        ``None`` for the one block where the tie limit falls inside (use ``mask`` there).

        Lets callers apply the rule with float ops (``torch.threshold``), several times cheaper
        than making and applying a bool mask.
        """
        local = self.tie_limit - start
        if local <= 0:
            return self.value
        if local >= length:
            return _float32_below(self.value)  # score >= value
        return None

    def mask(self, scores: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The rule on the flat block of scores that begins at flat index ``start``."""
        local = self.tie_limit - start
        if local <= 0:
            return scores > self.value
        if local >= scores.numel():
            return scores >= self.value
        keep = scores > self.value
        keep[:local] |= scores[:local] == self.value
        return keep


def _float32_below(value: float) -> float:
    """The largest float32 below ``value``: ``x >= value`` iff ``x > below`` for float32 x."""
    here = torch.tensor(value, dtype=torch.float32)
    return float(torch.nextafter(here, torch.tensor(-math.inf, dtype=torch.float32)))


def float32_above(value: float) -> float:
    """The smallest float32 above ``value``: ``x <= value`` iff ``x < above`` for float32 x."""
    here = torch.tensor(value, dtype=torch.float32)
    return float(torch.nextafter(here, torch.tensor(math.inf, dtype=torch.float32)))


@dataclass(frozen=True)
class Bits16:
    """Scores that are non-negative 16-bit floats, given as their bit patterns (``int16``) per
    flat index; ``dtype`` says which float they are (bfloat16 or float16)."""

    source: ScoreSource
    dtype: torch.dtype


def select_top_k(
    source: ScoreSource,
    n: int,
    k: int,
    *,
    bits16: Bits16 | None = None,
    counts: Counts16 | None = None,
) -> TopK:
    """The exact ``k`` largest of ``n`` scores (equal values lowest index first) as a rule.

    ``bits16``: the same scores as 16-bit bit patterns, which allows one counting pass
    (``histogram_kth``) and a tie search on the patterns, without a float32 copy of any block.
    ``counts``: that pass's counts, taken once for several cuts of the same scores.
    """
    if k >= n:
        return TopK(-math.inf, n)
    if k <= 0:
        return TopK(math.inf, 0)
    counted = histogram_kth(bits16, n, k, counts=counts) if bits16 is not None else None
    if counted is None and counts is not None and counts.gaps is not None:
        counted = histogram_kth(bits16, n, k)  # the k-th lies outside the bracket: count all
    if counted is not None and bits16 is not None:
        value, above, equal = counted.value, counted.above, counted.equal
        scan, target = bits16.source, counted.pattern  # find the ties on the bit patterns
    else:
        value, above, equal = kth_largest(source, n, k)
        scan, target = source, value
    start, seen = counted.ties_before(k - above) if counted is not None else (0, 0)
    return _with_tie_limit(scan, target, n, k, (value, above, equal), start, seen)


def _with_tie_limit(
    scan: Callable[[slice], torch.Tensor],
    target: float | int,
    n: int,
    k: int,
    kth: tuple[float, int, int],
    start: int = 0,
    seen: int = 0,
) -> TopK:
    """The rule for the ``k``-th largest ``(value, above, equal)``: when only some of the
    scores equal to it are in the top k, the flat index after the last of those (found by
    scanning ``scan(sl) == target`` from ``start``, ``seen`` of them before it)."""
    value, above, equal = kth
    ties = k - above  # how many entries equal to value are in the top k (>= 1)
    if ties >= equal:
        return TopK(value, n)
    for sl in blocks(n, start=start):
        where = torch.nonzero(scan(sl) == target).squeeze(1)
        if seen + where.numel() >= ties:
            return TopK(value, sl.start + int(where[ties - seen - 1]) + 1)
        seen += where.numel()
    raise AssertionError("unreachable: fewer equal scores than counted")


def select_top_share_of_nonzero(
    source: ScoreSource, n: int, share: float, band_pass: BandPass | None = None
) -> TopK:
    """``select_top_k(source, n, floor(share * nonzero))``, ``nonzero`` the count of nonzero
    scores (sce keeps a share of the variances that are not 0), counting and bracketing in one
    pass over the scores.

    Counting first would cost a pass of its own, and for sce every pass recomputes the variance
    from every model's task vector. So the sample estimates the nonzero share too, the bracket
    is widened by that estimate's error, and the pass counts the nonzero scores while it counts
    and gathers as ``kth_largest`` does. When the exact ``k`` falls outside the band (a sample
    that misleads), ``kth_largest`` runs with it: a second pass, the same answer.
    ``band_pass``: that one pass done by the caller's own loop (sce's compiled variance), with
    the answers ``_band_pass`` gives.
    """
    if n < SAMPLE_MIN_NUMEL:
        scores = source(slice(None))
        return select_top_k(scores.__getitem__, n, int(int(torch.count_nonzero(scores)) * share))
    sample = source(slice(None, None, n // SAMPLE_SIZE))
    m = sample.numel()
    nonzero_share = int(torch.count_nonzero(sample)) / m
    q = 1.0 - share * nonzero_share  # estimated quantile of the answer among all scores
    spread = math.sqrt(max(q * (1.0 - q), 1.0 / m) / m)
    spread += share * math.sqrt(max(nonzero_share * (1.0 - nonzero_share), 1.0 / m) / m)
    lo, hi = _sample_bracket(sample, q, 6.0 * spread + 2.0 / m)
    if band_pass is not None:
        above_hi, band, nonzero = band_pass(lo, hi)
    else:
        [(above_hi, band)], nonzero = _band_pass(source, n, [(lo, hi)], count_nonzero=True)
    k = int(nonzero * share)
    if k <= 0 or k >= n:
        return select_top_k(source, n, k)
    kth = _from_band(band, above_hi, k) or kth_largest(source, n, k)
    return _with_tie_limit(source, kth[0], n, k, kth)


@dataclass(frozen=True)
class Counted16:
    """What one counting pass over 16-bit scores says about the k-th largest: its value and bit
    pattern, the counts above and equal to it, and where the equal ones lie, run by run."""

    value: float
    above: int
    equal: int
    pattern: int
    run_starts: tuple[int, ...]  # flat index where each run of blocks begins
    run_equal: tuple[int, ...]  # how many scores equal ``value`` in each run

    def ties_before(self, ties: int) -> tuple[int, int]:
        """``(start, seen)``: where the run holding the ``ties``-th equal score begins, and how
        many equal scores come before it. The tie search starts there, not at index 0."""
        seen = 0
        for start, equal in zip(self.run_starts, self.run_equal, strict=True):
            if seen + equal >= ties:
                return start, seen
            seen += equal
        raise AssertionError("unreachable: fewer equal scores than counted")


class Counts16(NamedTuple):
    """How often each non-negative 16-bit pattern that occurs at all occurs, per run of blocks:
    ``counts[run, i]`` for pattern ``patterns[i]`` (ascending), and the flat index where each
    run starts. Only the patterns present are kept (a task vector's magnitudes take a few
    thousand of the 32768), so a search can keep the counts of every tensor between trials.

    ``gaps``: None when every score is counted. A count of some patterns only (``banded``)
    gives per column how many scores lie above its pattern and below the next column's
    without being counted; scores below the first column are not counted at all."""

    patterns: torch.Tensor  # int64, ascending
    counts: torch.Tensor  # int32, runs x patterns (a run holds far fewer than 2**31 entries)
    starts: tuple[int, ...]
    gaps: torch.Tensor | None = None  # int64, one per pattern

    @property
    def nbytes(self) -> int:
        extra = 0 if self.gaps is None else self.gaps.nbytes
        return self.patterns.nbytes + self.counts.nbytes + extra


def run_layout(n: int, runs: int = COUNT_RUNS) -> tuple[int, tuple[int, ...]]:
    """``(entries per run, where each run starts)``: whole blocks, at most ``runs`` runs."""
    block_count = -(-n // BLOCK)  # ceiling divisions: every run but the last is full
    per_run = -(-block_count // runs) * BLOCK
    return per_run, tuple(range(0, n, per_run))


def count16(bits16: Bits16, n: int, runs: int = COUNT_RUNS) -> Counts16:
    """One counting pass over 16-bit scores, per run of blocks (at most ``runs`` runs)."""
    bins = 1 << 15
    per_run, starts = run_layout(n, runs)
    counts = torch.zeros(len(starts), bins, dtype=torch.int64)
    for run, start in enumerate(starts):
        for sl in blocks(min(n, start + per_run), start=start):
            counts[run] += torch.bincount(bits16.source(sl), minlength=bins)
    present = torch.nonzero(counts.sum(0)).squeeze(1)
    return Counts16(present, counts[:, present].to(torch.int32), starts)


def histogram_kth(
    bits16: Bits16, n: int, k: int, runs: int = COUNT_RUNS, counts: Counts16 | None = None
) -> Counted16 | None:
    """``kth_largest`` for 16-bit scores, from one pass of counts (``count16``, or ``counts``
    when a caller took them already). None when the answer is NaN (the general path decides
    those).

    A non-negative float orders like its bits read as an integer, and a 16-bit float has at
    most ``2 ** 15`` non-negative patterns. Counting each pattern gives the exact answer from
    one ``bincount`` per block, with no sample, no band and no upcast; ties are counted, not
    searched. The counts are kept per run of blocks, so the tie search that follows reads one
    run, not everything before the cut.
    With ``gaps`` (a count of some patterns only) the answer may lie where nothing was
    counted: None then too.
    """
    patterns, counts, starts, gaps = counts if counts is not None else count16(bits16, n, runs)
    totals = counts.sum(0, dtype=torch.int64)
    from_top = (totals if gaps is None else totals + gaps).flip(0).cumsum_(0)
    index = int(torch.searchsorted(from_top, k))  # the first cumulative count reaching k
    if index == patterns.numel():
        return None  # below every counted pattern (only with gaps)
    column = patterns.numel() - 1 - index
    per_run_equal = counts[:, column]
    equal = int(per_run_equal.sum())
    above = int(from_top[index]) - equal
    if above >= k:
        return None  # in the uncounted gap above this pattern
    pattern = int(patterns[column])
    value = float(torch.tensor(pattern, dtype=torch.int16).view(bits16.dtype))
    if math.isnan(value):
        return None
    return Counted16(value, above, equal, pattern, starts, tuple(per_run_equal.tolist()))


def kth_largest(source: ScoreSource, n: int, k: int) -> tuple[float, int, int]:
    """The ``k``-th largest score (``1 <= k <= n``), exact, with the counts of scores above and
    equal to it (``kth_largest_of_each`` for one ``k``)."""
    return kth_largest_of_each(source, n, [k])[0]


def kth_largest_of_each(
    source: ScoreSource, n: int, ks: Sequence[int]
) -> list[tuple[float, int, int]]:
    """For each ``k`` in ``ks`` (``1 <= k <= n``): the ``k``-th largest score, exact, with the
    counts of scores above and equal to it; one pass over the scores for all of them.

    Small inputs: ``kthvalue`` on the whole. Large ones: quantiles of a strided sample bracket
    each answer (six standard errors either side); one pass counts the scores above each
    bracket and gathers those inside it; ``kthvalue`` on each small band gives that answer,
    and every score equal to it lies in the band. Several ranks at once (arcee_fusion's three
    quartiles) share the sample and the pass, which recomputes every score: each more rank
    costs only its compares. When a bracket misses (a sample that misleads), that rank falls
    back to the full scores.
    """
    found: list[tuple[float, int, int] | None] = [None] * len(ks)
    if n >= SAMPLE_MIN_NUMEL:
        sample = source(slice(None, None, n // SAMPLE_SIZE))
        brackets = [rank_bracket(sample, n, k) for k in ks]
        passed, _ = _band_pass(source, n, brackets)
        found = [_from_band(band, above, k) for (above, band), k in zip(passed, ks, strict=True)]
    if any(kth is None for kth in found):
        scores = source(slice(None))
        found = [kth or _counted(scores, n - k + 1, 0) for kth, k in zip(found, ks, strict=True)]
    return found  # type: ignore[return-value]  # every None was filled


def _band_pass(
    source: ScoreSource,
    n: int,
    brackets: Sequence[tuple[float, float]],
    *,
    count_nonzero: bool = False,
) -> tuple[list[tuple[int, torch.Tensor]], int]:
    """One pass over the scores: for each bracket ``(lo, hi)``, how many lie above ``hi`` and
    those in ``[lo, hi]``; and (when asked) how many are nonzero.

    The compares, the count and the gather run in NumPy (16-bit scores upcast first), about
    1.2 ns an element against torch's 3.3 (its boolean indexing finds indices first); this pass
    is the cost of every exact top-k and quantile over such scores. The bands' pieces stay
    NumPy arrays until one concatenation: torch tensors made from them one by one (or NumPy
    temporaries freed between torch allocations) left the heap fragmented, 200-300 MB more
    peak RSS on one 131M-element tensor.
    """
    above = [0] * len(brackets)
    parts: list[list[np.ndarray]] = [[] for _ in brackets]
    nonzero = 0
    for sl in blocks(n):
        scores = source(sl)
        if count_nonzero:
            nonzero += int(torch.count_nonzero(scores))
        if scores.dtype not in (torch.float32, torch.float64):
            scores = scores.to(torch.float32)  # exact for 16-bit floats; NumPy has no bfloat16
        values = scores.numpy()
        for i, (lo, hi) in enumerate(brackets):
            inside = values >= lo
            inside &= values <= hi
            above[i] += int(np.count_nonzero(values > hi))
            parts[i].append(values[inside])
    bands = [torch.from_numpy(np.concatenate(pieces)) for pieces in parts]
    return list(zip(above, bands, strict=True)), nonzero


def _from_band(band: torch.Tensor, above_hi: int, k: int) -> tuple[float, int, int] | None:
    """The ``k``-th largest from a band pass, or None when the bracket missed it."""
    need = k - above_hi  # rank of the answer, counted from the top of the band
    if 1 <= need <= band.numel():
        return _counted(band, band.numel() - need + 1, above_hi)
    return None


def rank_bracket(sample: torch.Tensor, n: int, k: int) -> tuple[float, float]:
    """Scores that bracket the ``k``-th largest of ``n``, from a sample of them: its
    quantiles six standard errors either side of the answer's."""
    m = sample.numel()
    q = 1.0 - k / n  # quantile of the answer among all scores
    margin = 6.0 * math.sqrt(max(q * (1.0 - q), 1.0 / m) / m) + 2.0 / m
    return _sample_bracket(sample, q, margin)


def _sample_bracket(sample: torch.Tensor, q: float, margin: float) -> tuple[float, float]:
    """The sample's values at quantiles ``q - margin`` and ``q + margin``."""
    m = sample.numel()
    lo_rank = min(m, max(1, math.floor((q - margin) * m)))
    hi_rank = min(m, max(1, math.ceil((q + margin) * m)))
    return float(torch.kthvalue(sample, lo_rank).values), float(
        torch.kthvalue(sample, hi_rank).values
    )


def _counted(scores: torch.Tensor, rank: int, above_offset: int) -> tuple[float, int, int]:
    value = float(torch.kthvalue(scores, rank).values)
    above = above_offset + int(torch.count_nonzero(scores > value))
    return value, above, int(torch.count_nonzero(scores == value))
