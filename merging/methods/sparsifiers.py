"""Sparsifiers of the task-arithmetic family as keep rules over blocks of a flat task vector.

``primitives`` holds the whole-tensor masks (magnitude, random, breadcrumbs, della) that define
the semantics. Here the same masks come as rules a method applies block by block, so neither
``|d|`` nor a float mask of the full tensor ever exists:

- magnitude and breadcrumbs: exact top-k cuts (``selection.TopK``), found in one pass over
  ``|x - b|`` recomputed per block; applying one costs a compare per element;
- random (DARE) and della: a stored mask (bits: a 32nd of a float32 tensor), because their
  draws must follow the documented protocol (``draws``): one uniform per element, in flat
  order, model after model in config order, from the tensor's stream. The stream does not
  depend on how it is chunked, so drawing block by block gives the whole-tensor numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from mergesearch.merging import derived
from mergesearch.merging.methods import banded, compiled, fused
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.draws import Draws, limits
from mergesearch.merging.methods.fused import BlockKeep
from mergesearch.merging.methods.selection import (
    BLOCK,
    Bits16,
    Counts16,
    TopK,
    blocks,
    count16,
    float32_above,
    select_top_k,
)


class KeepRule(Protocol):
    def mask(self, scores: torch.Tensor, sl: slice) -> torch.Tensor:
        """Keep mask of the flat block ``sl``, given that block's ``|d|`` in float32."""
        ...

    def apply(self, d: torch.Tensor, sl: slice) -> torch.Tensor:
        """``d`` (the float32 block ``sl``, owned by the caller) with dropped entries zeroed;
        may work in place."""
        ...

    def block_keep(self, delta: Delta, sl: slice) -> BlockKeep:
        """The rule on block ``sl`` of ``delta`` in the compiled loop's terms (``fused``)."""
        ...


@dataclass(frozen=True)
class Delta:
    """The flat task vector ``x - b`` (formed in the compute dtype) of one model."""

    x: torch.Tensor
    b: torch.Tensor
    shape: tuple[int, ...]
    # what x and b are (``derived.identity``): values derived from them alone are kept
    # between a search's trials under it; None: computed every time
    identity: Hashable | None = None

    @property
    def numel(self) -> int:
        return self.b.numel()

    def block(self, sl: slice) -> torch.Tensor:
        return torch.sub(self.x[sl], self.b[sl])

    def scores(self, sl: slice) -> torch.Tensor:
        """``|d|`` of a block in float32 (exact for 16-bit inputs): what top-k cuts compare."""
        return self.block(sl).abs_().to(P.accumulation_dtype(self.b.dtype))

    def magnitudes(self, sl: slice) -> torch.Tensor:
        """``|d|`` of a block in the narrowest dtype that orders exactly like ``scores``: the
        16-bit floats themselves for 16-bit inputs (``scores`` is their exact float32 copy)."""
        if self.x.dtype == self.b.dtype and self.b.dtype in (torch.bfloat16, torch.float16):
            return self.block(sl).abs_()
        return self.scores(sl)

    def magnitude_bits(self, sl: slice) -> torch.Tensor:
        """``|d|`` of a block of 16-bit floats as their bit patterns (``int16``, all >= 0)."""
        return self.block(sl).abs_().view(torch.int16)

    def _bits16(self) -> Bits16 | None:
        dtype = self.b.dtype
        sixteen = dtype in (torch.bfloat16, torch.float16) and self.x.dtype == dtype
        return Bits16(self.magnitude_bits, dtype) if sixteen else None

    def counts16(self, k: int | None = None) -> Counts16 | None:
        """The counting pass over 16-bit ``|d|`` (None for other dtypes), to share between
        several cuts of the same task vector (breadcrumbs takes two) and, in a search, between
        trials (``derived``). ``k``: the one rank wanted; where nothing is kept (a one-off
        merge) and the compiled pass applies, only the patterns near it are counted
        (``banded``)."""
        bits = self._bits16()
        if bits is None:
            return None
        if k is not None and self.identity is None and banded.applies(self.x, self.b):
            return banded.band_counts16(self.x, self.b, k)
        key = None if self.identity is None else ("count16", self.identity, self.x.dtype)
        return derived.remembered(key, lambda: count16(bits, self.numel))

    def top_k(self, k: int, counts: Counts16 | None = None) -> TopK:
        """The rule keeping the ``k`` largest ``|d|``; 16-bit scores are counted, not sampled."""
        if counts is None and 0 < k < self.numel:
            counts = self.counts16(k)
        return select_top_k(self.scores, self.numel, k, bits16=self._bits16(), counts=counts)


@dataclass(frozen=True)
class Top:
    """Keep the top-k of ``|d|``, minus the top-j when ``outliers`` is given (breadcrumbs)."""

    keep: TopK
    outliers: TopK | None = None

    def mask(self, scores: torch.Tensor, sl: slice) -> torch.Tensor:
        kept = self.keep.mask(scores, sl.start)
        if self.outliers is not None:
            kept &= ~self.outliers.mask(scores, sl.start)
        return kept

    def _cuts(self, sl: slice) -> tuple[float, float | None] | None:
        """``(cut, ceiling)`` with "kept" == ``cut < |d| < ceiling`` on block ``sl`` (no ceiling
        without outliers), or None for the block where a tie limit falls inside: the mask
        decides there."""
        length = sl.stop - sl.start
        keep_cut = self.keep.cut(sl.start, length)
        if keep_cut is None:
            return None
        if self.outliers is None:
            return keep_cut, None
        out_cut = self.outliers.cut(sl.start, length)  # an outlier: |d| > out_cut
        return None if out_cut is None else (keep_cut, float32_above(out_cut))

    def apply(self, d: torch.Tensor, sl: slice) -> torch.Tensor:
        # float ops: threshold |d| at the cut(s), then give the survivors d's signs back
        cuts = self._cuts(sl)
        if cuts is None:
            return P.keep_only(d, self.mask(d.abs(), sl))
        cut, ceiling = cuts
        kept = torch.threshold(d.abs(), cut, 0.0)
        if ceiling is not None:  # below the ceiling: -|d| > -ceiling
            kept = torch.threshold(kept.neg_(), -ceiling, 0.0).neg_()
        return kept.copysign_(d)

    def block_keep(self, delta: Delta, sl: slice) -> BlockKeep:
        cuts = self._cuts(sl)
        if cuts is None:
            return BlockKeep(mask=self.mask(delta.scores(sl), sl).view(torch.uint8).numpy())
        return BlockKeep(cut=cuts[0], below=cuts[1])


@dataclass(frozen=True)
class Stored:
    """A mask drawn up front, eight entries to a byte (``pack``): an eighth of a bool mask, a
    32nd of the float32 task vector, so the masks of every model stay small beside the
    inputs whatever the tensor's size."""

    bits: torch.Tensor  # uint8, NumPy's packbits order
    # (sum |d|, sum of the kept |d|) when the pass that drew the mask summed them on its way
    # (DELLA sees every |d| anyway): the L1 rescale then needs no pass of its own
    l1: tuple[float, float] | None = None

    def keep_bytes(self, sl: slice) -> torch.Tensor:
        """The block's mask as 0/1 bytes (``uint8``)."""
        first = sl.start // 8
        unpacked = np.unpackbits(self.bits[first : (sl.stop + 7) // 8].numpy())
        offset = sl.start - 8 * first
        return torch.from_numpy(unpacked[offset : offset + sl.stop - sl.start])

    def mask(self, scores: torch.Tensor, sl: slice) -> torch.Tensor:
        return self.keep_bytes(sl).view(torch.bool)

    def apply(self, d: torch.Tensor, sl: slice) -> torch.Tensor:
        return d.mul_(self.keep_bytes(sl))  # 0/1 bytes, not bools: see primitives.keep_only

    def block_keep(self, delta: Delta, sl: slice) -> BlockKeep:
        return BlockKeep(mask=self.keep_bytes(sl).numpy())


def pack(keep: torch.Tensor, bits: torch.Tensor, start: int) -> None:
    """Store the flat bool block ``keep`` that starts at flat index ``start`` (a multiple of 8)
    into ``bits``."""
    packed = np.packbits(keep.numpy())
    bits[start // 8 : start // 8 + packed.size] = torch.from_numpy(packed)


def magnitude(delta: Delta, p: Mapping[str, Any], g: Draws | None) -> KeepRule:
    k = P.magnitude_count(delta.numel, float(p["density"]))
    return Top(delta.top_k(k))


def breadcrumbs(delta: Delta, p: Mapping[str, Any], g: Draws | None) -> KeepRule:
    n = delta.numel
    bottom, top = P.breadcrumbs_counts(n, float(p["density"]), float(p["gamma"]))
    counts = delta.counts16() if top > 0 and bottom < n else None  # both cuts from one pass
    outliers = delta.top_k(top, counts) if top > 0 else None
    return Top(delta.top_k(n - bottom, counts), outliers)


def random(delta: Delta, p: Mapping[str, Any], g: Draws | None) -> KeepRule:
    density = float(p["density"])
    P.check_density(density)
    assert g is not None, "DARE draws need the tensor's stream"
    bits = torch.empty((delta.numel + 7) // 8, dtype=torch.uint8)
    for sl in blocks(delta.numel):  # BLOCK is a multiple of 8: every block starts on a byte
        pack(torch.from_numpy(g.below(density, sl.stop - sl.start)), bits, sl.start)
    return Stored(bits)


def della(delta: Delta, p: Mapping[str, Any], g: Draws | None) -> KeepRule:
    density, epsilon = float(p["density"]), float(p["epsilon"])
    P.check_della(density, epsilon)
    assert g is not None, "DELLA draws need the tensor's stream"
    n = delta.numel
    width = max(1, delta.shape[-1]) if delta.shape else 1  # a 1-D tensor is one row
    bits = torch.empty((n + 7) // 8, dtype=torch.uint8)
    # whole rows per block (ranks are per row), a multiple of 8 entries (blocks start on a byte)
    align = 8 // math.gcd(width, 8)
    rows = max(align, BLOCK // width // align * align)
    sums = np.zeros(2)  # sum |d|, sum of the kept |d| (float64)
    fast = compiled.applies_to(delta.b, delta.x)
    probs = P.della_probabilities(width, density, epsilon)
    word_limits = limits(probs.numpy()) if fast else None
    for sl in blocks(n, rows * width):
        if fast:
            words = g.words(sl.stop - sl.start)
            keep = fused.della_block(delta.b[sl], delta.x[sl], words, word_limits, sums)
            pack(torch.from_numpy(keep).view(torch.bool), bits, sl.start)
            continue
        uniforms = g.uniform(sl.stop - sl.start)
        magnitudes = delta.magnitudes(sl).view(-1, width)
        keep = P.della_keep(magnitudes, uniforms.view(magnitudes.shape), density, epsilon).view(-1)
        pack(keep, bits, sl.start)
        scores = magnitudes.view(-1).to(P.accumulation_dtype(magnitudes.dtype))
        sums[0] += float(scores.sum(dtype=torch.float64))
        sums[1] += float(P.keep_only(scores, keep).sum(dtype=torch.float64))
    return Stored(bits, l1=(float(sums[0]), float(sums[1])))


Sparsifier = Callable[[Delta, Mapping[str, Any], Draws | None], KeepRule]
