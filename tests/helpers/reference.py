"""Whole-tensor reference semantics of the sparsifiers, rescaling and sign election.

The merge methods never hold a mask or a copy of a whole task vector: they work block by block
(``merging.methods.sparsifiers``, ``task_arithmetic``). These functions state the same rules on
whole tensors, in the plainest form, so tests can check the blockwise code against them and pin
down the rules themselves (exact top-k with ties to the lowest index, DELLA's rank probabilities,
L1 rescale, TIES sign election). They reuse the library's counting and validation helpers, so a
rule (how many entries a density keeps, which densities are refused) is stated once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import selection as S
from mergesearch.merging.methods.draws import Draws


def scores(d: torch.Tensor) -> torch.Tensor:
    """Flat ``|d|`` in the dtype the selection runs in (exact for 16-bit inputs)."""
    return d.detach().reshape(-1).abs().to(P.accumulation_dtype(d.dtype))


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of a tensor (``1 <= k <= numel``), as a 0-dim tensor."""
    flat = values.reshape(-1)
    value, _, _ = S.kth_largest(flat.__getitem__, flat.numel(), k)
    return torch.tensor(value, dtype=values.dtype)


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of exactly ``k`` largest entries; equal values go lowest flat index first.

    The order is total (value descending, then index ascending), so masks for different ``k``
    are nested: ``topk_mask(s, a) <= topk_mask(s, b)`` for ``a <= b``.
    """
    flat = values.reshape(-1)
    return S.select_top_k(flat.__getitem__, flat.numel(), k).mask(flat).reshape(values.shape)


def magnitude_mask(d: torch.Tensor, density: float) -> torch.Tensor:
    """TIES: keep the ``floor(density * numel)`` entries of largest ``|d|`` in the tensor."""
    P.check_density(density)
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool)
    return topk_mask(scores(d), P.magnitude_count(d.numel(), density)).reshape(d.shape)


def random_mask(d: torch.Tensor, density: float, draws: Draws) -> torch.Tensor:
    """DARE: keep each entry independently with probability ``density``: its uniform, in
    flat order, below ``density`` (compared exactly, in float64)."""
    P.check_density(density)
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool)
    return draws.uniform(d.numel()).view(d.shape).double() < density


def breadcrumbs_mask(d: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the smallest and the ``gamma`` largest ``|d|``, keeping
    ``floor(density * n)`` (``primitives.breadcrumbs_counts``); with no top to drop it is
    plain magnitude pruning."""
    bottom, top = P.breadcrumbs_counts(d.numel(), density, gamma)
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool)
    s = scores(d)
    mask = topk_mask(s, d.numel() - bottom)
    if top > 0:
        mask &= ~topk_mask(s, top)
    return mask.reshape(d.shape)


def della_mask(d: torch.Tensor, density: float, epsilon: float, draws: Draws) -> torch.Tensor:
    """DELLA's MagPrune: within each row (last dimension), the keep probability grows linearly
    with the rank of ``|d|``, from ``density - epsilon`` to ``density + epsilon``."""
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool)
    P.check_della(density, epsilon)
    width = d.shape[-1] if d.dim() >= 1 else 1
    rows = d.detach().reshape(-1, width).abs()
    uniforms = draws.uniform(rows.numel()).view(rows.shape)
    return P.della_keep(rows, uniforms, density, epsilon).reshape(d.shape)


def l1_norm(x: torch.Tensor) -> float:
    return float(x.abs().sum(dtype=P.accumulation_dtype(x.dtype)))


def l1_rescale(kept: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``kept`` scaled to ``original``'s L1 norm (unchanged when either is below
    ``RESCALE_EPS``)."""
    before, after = l1_norm(original), l1_norm(kept)
    if before < P.RESCALE_EPS or after < P.RESCALE_EPS:
        return kept
    return kept * (before / after)


def apply_mask(d: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """``d`` with dropped entries zeroed, L1-rescaled to ``d``'s norm when ``rescale``."""
    kept = d * mask
    return l1_rescale(kept, d) if rescale else kept


def sign_consensus(weighted_deltas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """TIES sign election: one mask per delta, true where its sign agrees with the sum's
    (``+1`` where the sum is ``>= 0``). Zeros never agree: pruned entries neither vote nor
    count in the divisor."""
    total = weighted_deltas[0].to(P.accumulation_dtype(weighted_deltas[0].dtype), copy=True)
    for delta in weighted_deltas[1:]:
        total += delta
    positive = total >= 0
    return [torch.where(positive, delta, -delta) > 0 for delta in weighted_deltas]
