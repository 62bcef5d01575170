"""Primitives: exact top-k selection, sparsifier masks, rescaling, sign election, accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods.draws import Draws
from tests.helpers import reference as R


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k largest, equal values lowest index first, via one stable full sort."""
    flat = scores.reshape(-1)
    order = torch.sort(-flat.double(), stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)


# --- exact top-k ------------------------------------------------------------------------------


def test_topk_mask_on_small_tensor_with_ties_prefers_low_indices():
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5])
    assert R.topk_mask(scores, 3).tolist() == [0, 1, 1, 1, 0, 0, 0]
    assert R.topk_mask(scores, 4).tolist() == [0, 1, 1, 1, 1, 0, 0]
    assert R.topk_mask(scores, 0).sum() == 0
    assert R.topk_mask(scores, 7).all()


@pytest.mark.parametrize("density", [0.001, 0.5, 0.97])
def test_topk_mask_large_tensor_with_many_ties_is_exact(density):
    # Values on a coarse grid: every cut-off falls inside a block of equal magnitudes, and the
    # size takes the sampled-bracket path of kth_largest.
    values = torch.randint(-300, 300, (P._SAMPLE_MIN_NUMEL + 7,), generator=gen(1)).float() / 7
    k = math.floor(density * values.numel())
    mask = R.topk_mask(values.abs(), k)
    assert int(mask.sum()) == k
    assert torch.equal(mask, reference_topk(values.abs(), k))


@pytest.mark.parametrize("k", [1, 5000, 700_000])
def test_kth_largest_on_distinct_values_is_exact(k):
    scores = torch.randn(P._SAMPLE_MIN_NUMEL + 3, generator=gen(20)).abs()
    assert R.kth_largest(scores, k) == torch.kthvalue(scores, scores.numel() - k + 1).values


def test_kth_largest_falls_back_when_the_sample_misleads():
    # every strided sample point is 0, the rest are positive: the bracket misses
    n = P._SAMPLE_MIN_NUMEL
    scores = torch.rand(n, generator=gen(2)) + 1.0
    scores[:: n // P._SAMPLE_SIZE] = 0.0
    descending = torch.sort(scores, descending=True).values
    for k in (1, n // 3, n - 10, n):
        assert R.kth_largest(scores, k) == descending[k - 1]


def test_topk_masks_are_nested():
    scores = torch.randint(0, 20, (5000,), generator=gen(3)).float()
    small, large = R.topk_mask(scores, 1234), R.topk_mask(scores, 3000)
    assert bool((small <= large).all())


# --- magnitude (TIES) ---------------------------------------------------------------------------


def test_magnitude_mask_keeps_floor_density_n_largest():
    d = torch.randn(10, 13, generator=gen(4))
    mask = R.magnitude_mask(d, 0.37)
    k = math.floor(0.37 * 130)
    assert mask.shape == d.shape
    assert int(mask.sum()) == k
    assert d.abs()[mask].min() >= d.abs()[~mask].max()


def test_magnitude_mask_edge_cases():
    d = torch.randn(50, generator=gen(5))
    assert R.magnitude_mask(d, 1.0).all()
    assert R.magnitude_mask(d, 1.5).all()
    with pytest.raises(ConfigError, match="density"):
        R.magnitude_mask(d, 0.01)  # floor(0.5) = 0
    with pytest.raises(ConfigError, match="density"):
        R.magnitude_mask(d, -0.2)


def test_magnitude_mask_bfloat16_ties_are_deterministic():
    d = torch.randn(300, 40, generator=gen(6)).to(torch.bfloat16)
    mask = R.magnitude_mask(d, 0.3)
    assert int(mask.sum()) == math.floor(0.3 * d.numel())
    assert torch.equal(mask, reference_topk(d.float().abs(), int(mask.sum())))


# --- random (DARE) -----------------------------------------------------------------------------


def test_random_mask_density_and_reproducibility():
    d = torch.randn(1024, 1024, generator=gen(7))
    mask = R.random_mask(d, 0.3, Draws(11))
    assert abs(mask.float().mean().item() - 0.3) < 0.01 * 0.3
    assert torch.equal(mask, R.random_mask(d, 0.3, Draws(11)))
    assert not torch.equal(mask, R.random_mask(d, 0.3, Draws(12)))
    assert R.random_mask(d, 1.0, Draws(11)).all()
    assert not R.random_mask(d, 0.0, Draws(11)).any()


def test_rescale_preserves_the_l1_norm():
    d = torch.randn(1000, 1000, generator=gen(8))
    kept = R.apply_mask(d, R.random_mask(d, 0.1, Draws(13)), rescale=True)
    assert kept.abs().double().sum().item() == pytest.approx(d.abs().double().sum().item(), 1e-5)
    unscaled = R.apply_mask(d, R.random_mask(d, 0.1, Draws(13)), rescale=False)
    ratio = d.abs().double().sum() / unscaled.abs().double().sum()
    torch.testing.assert_close(kept, unscaled * ratio.float())
    # L1 matching, not 1/density
    assert ratio.item() != pytest.approx(10.0, abs=1e-6)


def test_l1_rescale_skips_tiny_norms():
    d = torch.full((10,), 1e-9)
    kept = d * torch.tensor([1.0] + [0.0] * 9)
    assert torch.equal(R.l1_rescale(kept, d), kept)
    assert torch.equal(R.l1_rescale(torch.zeros(10), torch.ones(10)), torch.zeros(10))


# --- breadcrumbs --------------------------------------------------------------------------------


def test_breadcrumbs_drops_outliers_and_small_values():
    d = torch.arange(1.0, 101.0)  # |d| ascending by index, no ties
    mask = R.breadcrumbs_mask(d, 0.5, 0.1)
    # keep 50, drop the 10 largest, so the 40 smallest go: ranks [40, 90)
    assert mask.nonzero().squeeze(1).tolist() == list(range(40, 90))


def test_breadcrumbs_with_top_zero_keeps_the_largest():
    """Intentional difference from mergekit, which keeps nothing when floor(gamma n) == 0."""
    d = -torch.arange(1.0, 51.0)
    mask = R.breadcrumbs_mask(d, 0.2, 0.01)  # top = floor(0.5) = 0
    assert mask.nonzero().squeeze(1).tolist() == list(range(40, 50))
    assert torch.equal(mask, R.magnitude_mask(d, 0.2))


def test_breadcrumbs_negative_bottom_shrinks_top():
    d = torch.arange(1.0, 21.0)
    mask = R.breadcrumbs_mask(d, 0.9, 0.3)  # keep 18, top 6 -> bottom -4: top 2, bottom 0
    assert mask.nonzero().squeeze(1).tolist() == list(range(0, 18))


def test_breadcrumbs_density_one_is_unchanged_and_ties_deterministic():
    d = torch.tensor([2.0, -2.0, 1.0, 2.0, 1.0, -1.0, 3.0, 0.0])
    assert R.breadcrumbs_mask(d, 1.0, 0.5).all()
    # keep 4, top 1 (the 3.0), bottom 3: among the three 1s the highest index ranks lowest,
    # among the three 2s the lowest index ranks highest
    mask = R.breadcrumbs_mask(d, 0.5, 0.125)
    assert mask.tolist() == [True, True, True, True, False, False, False, False]


# --- della ----------------------------------------------------------------------------------------


def test_della_keeps_density_on_average_and_favours_large_magnitudes():
    # rows already sorted by magnitude, so a column index is the rank
    row = torch.linspace(0.1, 1.0, 1000) * torch.tensor([1.0, -1.0]).repeat(500)
    d = row.expand(500, 1000).contiguous()
    mask = R.della_mask(d, 0.5, 0.4, Draws(14))
    assert abs(mask.float().mean().item() - 0.5) < 0.005
    top_decile = mask[:, 900:].float().mean().item()
    bottom_decile = mask[:, :100].float().mean().item()
    assert top_decile == pytest.approx(0.5 + 0.4 * 0.9, abs=0.01)  # p = 0.1 + 0.8 r
    assert bottom_decile == pytest.approx(0.5 - 0.4 * 0.9, abs=0.01)
    assert torch.equal(mask, R.della_mask(d, 0.5, 0.4, Draws(14)))


def test_della_probability_by_hand():
    d = torch.tensor([[3.0, -1.0, 2.0], [0.0, 5.0, -5.0]])
    draws = Draws(15).uniform(d.numel()).view(d.shape)
    # ranks ascending per row (ties by index): [2, 0, 1] and [0, 1, 2] -> r = rank / 2
    probs = 0.4 + 0.2 * torch.tensor([[2, 0, 1], [0, 1, 2]]) / 2
    assert torch.equal(R.della_mask(d, 0.5, 0.1, Draws(15)), draws < probs)


def test_della_one_dimensional_and_single_column():
    d = torch.randn(7, generator=gen(10))
    draws = Draws(16).uniform(7)
    ranks = torch.tensor(np.argsort(np.argsort(d.abs().numpy(), kind="stable"), kind="stable"))
    expected = draws < (0.3 + 0.4 * ranks / 6)
    assert torch.equal(R.della_mask(d, 0.5, 0.2, Draws(16)), expected)
    column = torch.randn(5, 1, generator=gen(10))  # rows of one element: p = density
    draws = Draws(17).uniform(5).view(5, 1)
    assert torch.equal(R.della_mask(column, 0.5, 0.2, Draws(17)), draws < 0.5)


def test_della_validation_only_below_density_one():
    d = torch.randn(4, 4, generator=gen(11))
    assert R.della_mask(d, 1.0, 0.5, Draws(1)).all()
    with pytest.raises(ConfigError, match="epsilon"):
        R.della_mask(d, 0.2, 0.2, Draws(1))
    with pytest.raises(ConfigError, match="epsilon"):
        R.della_mask(d, 0.8, 0.2, Draws(1))


# --- sign consensus -------------------------------------------------------------------------------


def test_sign_consensus_zeros_never_vote_and_ties_elect_plus():
    a = torch.tensor([1.0, 0.0, -2.0, 1.0])
    b = torch.tensor([-0.5, 0.0, 1.0, -1.0])
    ma, mb = R.sign_consensus([a, b])
    assert ma.tolist() == [True, False, True, True]
    assert mb.tolist() == [False, False, False, False]


# --- accuracy of reductions and slerp on large tensors ---------------------------------------------


def test_dot_and_l1_norm_are_accurate_on_large_tensors():
    a = torch.randn(4_000_000, generator=gen(12)) + 0.5
    b = a + 0.01 * torch.randn(4_000_000, generator=gen(13))
    exact = torch.dot(a.double(), b.double()).item()
    assert P.dot(a, b).item() == pytest.approx(exact, rel=1e-6)
    assert R.l1_norm(a) == pytest.approx(a.double().abs().sum().item(), rel=1e-6)


def test_slerp_on_a_large_tensor_matches_float64():
    v0 = torch.randn(1_000_000, generator=gen(14))
    v1 = v0 + 0.3 * torch.randn(1_000_000, generator=gen(15))
    a, b = v0.double(), v1.double()
    theta = math.acos((a @ b / (a.norm() * b.norm())).item())
    t = 0.35
    expected = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    torch.testing.assert_close(P.slerp(t, v0, v1).double(), expected, atol=2e-6, rtol=0)
