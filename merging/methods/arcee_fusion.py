"""Arcee Fusion: take the other model's value only where its change is important.

Rows are the last dimension (a 1-D tensor is one row):

    kl_r = sum_j p_j log(p_j / q_j),  p = softmax(x_r) + 1e-8,  q = softmax(b_r) + 1e-8
    importance = |x - b| * kl_r                        per element, kl of the element's row
    q1, med, q3 = importance at sorted positions floor(q (n - 1)), q = 0.25, 0.5, 0.75
    threshold = med + 1.5 (q3 - q1)
    result = b + (x - b) * (importance >= threshold)

The quartiles are exact order statistics for every tensor size, found together in one pass
without holding the importance whole (``selection.kth_largest_of_each``). Deliberate
difference: mergekit estimates them from a random sample of 1e6 elements on larger tensors, so
its output there changes from run to run; here the same inputs always give the same merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mergesearch.merging import buffers
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import selection as S
from mergesearch.merging.methods.base import BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws

SOFTMAX_EPS = 1e-8
QUARTILES = (1, 2, 3)  # quarters: q1, median, q3
OUTLIER_SPAN = 1.5  # threshold = median + 1.5 * interquartile range


def row_divergence(
    x: torch.Tensor,
    b: torch.Tensor,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KL(softmax(x) || softmax(b))`` of each row (last dim), both shifted by 1e-8; ``[rows, 1]``.

    ``dtype``: what to compute in; softmax casts its input itself and every later step works
    in place, which halves the cost of this pass (the largest of the method) and leaves each
    value as the plain formula gives it. ``out``: where to put the ``[rows, 1]`` result.
    """
    p = F.softmax(x, dim=-1, dtype=dtype).add_(SOFTMAX_EPS)
    q = F.softmax(b, dim=-1, dtype=dtype).add_(SOFTMAX_EPS)
    return torch.sum(torch.div(p, q, out=q).log_().mul_(p), dim=-1, keepdim=True, out=out)


class Importance:
    """``|x - b| * kl(row)`` of any slice of the flat tensor, recomputed on demand."""

    def __init__(self, x: torch.Tensor, b: torch.Tensor, width: int):
        self.acc = P.accumulation_dtype(b.dtype)
        self.x, self.b, self.width = x, b, width
        self.n = b.numel()
        rows = self.n // width
        step = max(1, S.BLOCK // width)
        # one tensor for every row's divergence, written block by block: a small result
        # allocated per block would land in the hole the block's temporaries just left, so
        # the next block's could not reuse it (glibc splits the free chunk), and the heap
        # grew by a block per block, 0.5 GB over a 32000 x 4096 embedding
        kl = torch.empty(rows, 1, dtype=self.acc)
        for r in range(0, rows, step):
            rx = x[r * width : (r + step) * width].view(-1, width)
            rb = b[r * width : (r + step) * width].view(-1, width)
            row_divergence(rx, rb, self.acc, out=kl[r : r + step])
        self.kl = kl.reshape(-1)

    def _rows(self, r0: int, r1: int, t: torch.Tensor) -> torch.Tensor:
        return t[r0 * self.width : r1 * self.width].to(self.acc).view(-1, self.width)

    def __call__(self, sl: slice) -> torch.Tensor:
        start, stop, step = sl.indices(self.n)
        if step != 1:  # a strided sample: each element looks its row up
            rows = torch.arange(start, stop, step) // self.width
            return torch.sub(self.x[sl], self.b[sl]).abs_().to(self.acc).mul_(self.kl[rows])
        r0, r1 = start // self.width, -(-stop // self.width)
        d = torch.sub(self._rows(r0, r1, self.x), self._rows(r0, r1, self.b)).abs_()
        d.mul_(self.kl[r0:r1, None])
        offset = r0 * self.width
        return d.reshape(-1)[start - offset : stop - offset]


def fusion_threshold(importance: Importance) -> torch.Tensor:
    """``median + 1.5 * (q3 - q1)`` of the importance, exact, in its float dtype; the three
    quartiles from one pass over the importance."""
    n = importance.n
    ranks = [n - (quarter * (n - 1)) // 4 for quarter in QUARTILES]
    q1, median, q3 = (
        torch.tensor(value, dtype=importance.acc)
        for value, _, _ in S.kth_largest_of_each(importance, n, ranks)
    )
    return median + OUTLIER_SPAN * (q3 - q1)


def arcee_fusion(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    b, x = P.base_and_other("arcee_fusion", inputs, base)
    assert base is not None  # checked by base_and_other
    width = max(1, base.shape[-1]) if len(base.shape) >= 1 else 1
    importance = Importance(x, b, width)
    threshold = float(fusion_threshold(importance))
    out = buffers.empty_like(b, reuse=b)  # each b[sl] is read before out[sl] is written
    for sl in S.blocks(b.numel(), max(1, S.BLOCK // width) * width):  # whole rows per block
        keep = importance(sl) >= threshold
        d = P.keep_only(torch.sub(x[sl], b[sl]).to(importance.acc), keep)
        out[sl] = d.add_(b[sl])
    return out.reshape(base.shape)


register(
    MergeMethod(
        name="arcee_fusion",
        fn=arcee_fusion,
        base=BaseRole.REQUIRED,
        min_inputs=1,
        max_inputs=1,
        result_in_base=True,
        flat_blocks=True,  # rows as flat slices, the quartiles' sample by stride
        description="keep the other model's changes whose KL-weighted size is an outlier",
    )
)
