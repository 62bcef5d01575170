"""Sparsifiers of the task-arithmetic family as keep rules over blocks of a flat task vector.

``primitives`` holds the whole-tensor masks (magnitude, random, breadcrumbs, della) that define
the semantics. Here the same masks come as rules a method applies block by block, so neither
``|d|`` nor a float mask of the full tensor ever exists:

- magnitude and breadcrumbs: exact top-k cuts (``selection.TopK``), found in one pass over
  ``|x - b|`` recomputed per block; applying one costs a compare per element;
- random (DARE) and della: a stored bool mask (a quarter of a float32 tensor), because their
  draws must follow the documented protocol: one ``torch.rand(shape)`` per model, in config
  order, from the method's generator. ``torch.rand`` draws element by element, so drawing the
  same tensor in consecutive flat chunks gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.selection import BLOCK, TopK, blocks, float32_above, select_top_k


class KeepRule(Protocol):
    def mask(self, scores: torch.Tensor, sl: slice) -> torch.Tensor:
        """Keep mask of the flat block ``sl``, given that block's ``|d|`` in float32."""
        ...

    def apply(self, d: torch.Tensor, sl: slice) -> torch.Tensor:
        """``d`` (the float32 block ``sl``, owned by the caller) with dropped entries zeroed;
        may work in place."""
        ...


@dataclass(frozen=True)
class Delta:
    """The flat task vector ``x - b`` (formed in the compute dtype) of one model."""

    x: torch.Tensor
    b: torch.Tensor
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return self.b.numel()

    def block(self, sl: slice) -> torch.Tensor:
        return torch.sub(self.x[sl], self.b[sl])

    def scores(self, sl: slice) -> torch.Tensor:
        """``|d|`` of a block in float32 (exact for 16-bit inputs): what top-k cuts compare."""
        return self.block(sl).abs_().to(P.accumulation_dtype(self.b.dtype))


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

    def apply(self, d: torch.Tensor, sl: slice) -> torch.Tensor:
        # float ops: threshold |d| at the cut(s), then give the survivors d's signs back
        length = sl.stop - sl.start
        keep_cut = self.keep.cut(sl.start, length)
        out_cut = self.outliers.cut(sl.start, length) if self.outliers is not None else None
        if keep_cut is None or (self.outliers is not None and out_cut is None):
            return d.mul_(self.mask(d.abs(), sl))
        kept = torch.threshold(d.abs(), keep_cut, 0.0)
        if out_cut is not None:  # not an outlier: |d| <= out_cut, i.e. -|d| > -above(out_cut)
            kept = torch.threshold(kept.neg_(), -float32_above(out_cut), 0.0).neg_()
        return kept.copysign_(d)


@dataclass(frozen=True)
class Stored:
    """A mask drawn up front (flat bool)."""

    keep: torch.Tensor

    def mask(self, scores: torch.Tensor, sl: slice) -> torch.Tensor:
        return self.keep[sl]

    def apply(self, d: torch.Tensor, sl: slice) -> torch.Tensor:
        return d.mul_(self.keep[sl])


def magnitude(delta: Delta, p: Mapping[str, Any], g: torch.Generator | None) -> KeepRule:
    k = P.magnitude_count(delta.numel, float(p["density"]))
    return Top(select_top_k(delta.scores, delta.numel, k))


def breadcrumbs(delta: Delta, p: Mapping[str, Any], g: torch.Generator | None) -> KeepRule:
    n = delta.numel
    bottom, top = P.breadcrumbs_counts(n, float(p["density"]), float(p["gamma"]))
    outliers = select_top_k(delta.scores, n, top) if top > 0 else None
    return Top(select_top_k(delta.scores, n, n - bottom), outliers)


def random(delta: Delta, p: Mapping[str, Any], g: torch.Generator | None) -> KeepRule:
    density = float(p["density"])
    P.check_density(density)
    keep = torch.empty(delta.numel, dtype=torch.bool)
    draws = torch.empty(min(BLOCK, delta.numel))
    for sl in blocks(delta.numel):
        chunk = draws[: sl.stop - sl.start]
        torch.rand(chunk.shape, generator=g, out=chunk)
        torch.lt(chunk, density, out=keep[sl])
    return Stored(keep)


def della(delta: Delta, p: Mapping[str, Any], g: torch.Generator | None) -> KeepRule:
    density, epsilon = float(p["density"]), float(p["epsilon"])
    P.check_della(density, epsilon)
    n = delta.numel
    width = max(1, delta.shape[-1]) if delta.shape else 1  # a 1-D tensor is one row
    keep = torch.empty(n, dtype=torch.bool)
    rows = max(1, BLOCK // width)  # whole rows per block: ranks are per row
    for sl in blocks(n, rows * width):
        magnitudes = delta.scores(sl).view(-1, width)
        draws = torch.rand(magnitudes.shape, generator=g)
        keep[sl] = P.della_keep(magnitudes, draws, density, epsilon).view(-1)
    return Stored(keep)


Sparsifier = Callable[[Delta, Mapping[str, Any], torch.Generator | None], KeepRule]
