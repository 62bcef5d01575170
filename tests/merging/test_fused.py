"""The compiled task-arithmetic pass (``fused``) against the torch pass it replaces: the same
bits for every variant of the family, special values included, and the same random stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergesearch.merging.methods import compiled
from mergesearch.merging.methods import selection as S
from mergesearch.merging.methods import sparsifiers as SP
from mergesearch.merging.methods import task_arithmetic as TA
from mergesearch.merging.methods.draws import Draws

pytestmark = pytest.mark.skipif(compiled.numba is None, reason="numba is not installed")

# the family's YAML names as (sparsifier, consensus, per-model extras)
VARIANTS = {
    "task_arithmetic": (None, False),
    "ties": (SP.magnitude, True),
    "dare_linear": (SP.random, False),
    "dare_ties": (SP.random, True),
    "breadcrumbs": (SP.breadcrumbs, False),
    "breadcrumbs_ties": (SP.breadcrumbs, True),
    "della": (SP.della, True),
    "della_linear": (SP.della, False),
}


def _family(seed: int, special: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """bfloat16 base + 3 over more than two blocks, rows of 700; magnitudes on a coarse
    grid, so top-k cuts fall inside runs of equal values (the mask fallback per block), and
    with ``special`` zeros, task vectors that cancel, huge and infinite entries and a NaN."""
    g = torch.Generator().manual_seed(seed)
    shape = (2 * S.BLOCK // 700 + 5, 700)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    models = []
    for i in range(3):
        step = torch.randint(-4, 5, shape, generator=g).float() * 0.25
        x = (base.float() + step).to(torch.bfloat16)
        if special:
            flat = x.view(-1)
            flat[i::97] = base.view(-1)[i::97]  # d = 0
            flat[5 + i :: 1009] = -flat[5 + i :: 1009]
            flat[7::4099] = 3e38 if i == 0 else -3e38
            flat[11 + i] = float("inf") if i < 2 else float("-inf")
            flat[13] = float("nan") if i == 1 else flat[13]
        models.append(x)
    return base, models


def _both(monkeypatch, name: str, params: dict, per_model: list[dict], special: bool):
    sparsifier, consensus = VARIANTS[name]
    base, models = _family(3, special)
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        out = TA.generalized_task_arithmetic(
            models, base, per_model, params, Draws(11), sparsifier=sparsifier, consensus=consensus
        )
        results.append(out)
    return results


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize(
    "params",
    [
        {"normalize": True, "rescale": True, "lambda": 1.0},
        {"normalize": False, "rescale": False, "lambda": 0.7},
    ],
)
@pytest.mark.parametrize("special", [False, True])
def test_compiled_pass_gives_the_torch_pass_bits(monkeypatch, name, params, special):
    per_model = [
        {"weight": 0.5, "density": 0.4, "gamma": 0.05, "epsilon": 0.1},
        {"weight": 0.3, "density": 0.7, "gamma": 0.01, "epsilon": 0.2},
        {"weight": 1.2, "density": 1.0, "gamma": 0.01, "epsilon": 0.1},  # no sparsifier
    ]
    torch_pass, compiled = _both(monkeypatch, name, params, per_model, special)
    assert compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled, torch_pass, rtol=0, atol=0, equal_nan=True)


def test_negative_weights_make_zero_divisors_one_in_both(monkeypatch):
    """A weight <= 0 leaves no divisor floor: zeros of the consensus divisor become 1."""
    per_model = [
        {"weight": -0.5, "density": 0.5},
        {"weight": 0.8, "density": 0.6},
        {"weight": 0.0, "density": 0.9},
    ]
    params = {"normalize": True, "rescale": True, "lambda": 1.3}
    torch_pass, compiled = _both(monkeypatch, "dare_ties", params, per_model, special=False)
    assert torch.equal(compiled, torch_pass)


def test_compiled_draws_are_numpys_sfc64_stream(monkeypatch):
    monkeypatch.setenv("MERGESEARCH_FUSED", "1")
    compiled = Draws(5)
    assert compiled._state is not None
    sizes = [1, 1000, 3, 65_537]
    got = np.concatenate([compiled.words(k) for k in sizes])
    raw = np.random.SFC64(5).random_raw((sum(sizes) + 1) // 2).view(np.uint32)
    assert np.array_equal(got, raw[: sum(sizes)])


def test_rescale_sums_agree_between_passes(monkeypatch):
    """The L1 sums are float64 in both passes (the compiled one may reorder them): the
    factors agree far below float32's resolution."""
    base, models = _family(4, special=False)
    b = base.reshape(-1)
    deltas = [SP.Delta(x.reshape(-1), b, tuple(base.shape)) for x in models]
    factors = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        g = Draws(2)
        rules = [SP.random(d, {"density": 0.3}, g) for d in deltas[:2]]
        rules.append(SP.magnitude(deltas[2], {"density": 0.5}, None))
        factors.append(TA._l1_rescale_factors(deltas, rules))
    assert all(f > 1.2 for f in factors[0])
    assert factors[1] == pytest.approx(factors[0], rel=1e-12)


def test_rounding_to_bfloat16_matches_torch_on_full_precision_sums(monkeypatch):
    """Weighted sums of unrelated task vectors fill all 24 bits of float32, so the final
    rounding meets halfway cases (rounded to even) and every other low half."""
    g = torch.Generator().manual_seed(8)
    base = torch.randn(1 << 20, generator=g).to(torch.bfloat16)
    models = [(base.float() + torch.randn(1 << 20, generator=g) * 0.01).to(torch.bfloat16)]
    models.append((base.float() - torch.randn(1 << 20, generator=g) * 0.03).to(torch.bfloat16))
    per_model = [{"weight": 0.3, "density": 1.0}, {"weight": 0.7, "density": 1.0}]
    params = {"normalize": False, "rescale": False, "lambda": 0.9}
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        out = TA.generalized_task_arithmetic(
            models, base, per_model, params, None, sparsifier=None, consensus=False
        )
        results.append(out)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("width", [1, 7, 700, 5000])
def test_della_masks_and_sums_are_the_torch_pass(monkeypatch, width):
    """The compiled DELLA pass ranks each row as the stable sort does (runs of equal
    magnitudes included) and draws the same stream: the same mask bits, the same L1 sums."""
    base, models = _family(5, special=False)
    b, x = base.reshape(-1), models[0].reshape(-1)
    n = b.numel() // width * width
    delta = SP.Delta(x[:n], b[:n], (n // width, width))
    rules = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        rules.append(SP.della(delta, {"density": 0.4, "epsilon": 0.2}, Draws(6)))
    assert torch.equal(rules[0].bits, rules[1].bits)
    assert rules[1].l1 == pytest.approx(rules[0].l1, rel=1e-12)
    assert 0.3 < rules[1].l1[1] / rules[1].l1[0] < 0.9


@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
@pytest.mark.parametrize("epsilon", [0.5, 0.0, -1.0])
@pytest.mark.parametrize("special", [False, True])
def test_compiled_ram_gives_the_torch_bits(monkeypatch, name, epsilon, special):
    """ram's activity (``|d| > epsilon``; every element when epsilon < 0), its counts and
    ramplus_tl's scaled unique changes: the compiled loops against the torch ops."""
    from mergesearch.merging.methods import get_method

    method = get_method(name)
    base, models = _family(7, special)
    if not special:  # on a grid of eighths every d is exact: |d| == epsilon happens
        g = torch.Generator().manual_seed(7)
        grid = torch.randint(-8, 9, base.shape, generator=g).float() / 8
        steps = [torch.randint(-4, 5, base.shape, generator=g).float() / 4 for _ in models]
        base, models = grid.bfloat16(), [(grid + step).bfloat16() for step in steps]
    params = {"epsilon": epsilon, "r": 0.4, "alpha": 0.5}
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        results.append(method.fn(models, base, [{}] * 3, params, None))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0, equal_nan=True)
    if name == "ramplus_tl" and not special:
        from mergesearch.merging.methods import ram

        b = base.reshape(-1)
        deltas = [SP.Delta(x.reshape(-1), b, tuple(base.shape)) for x in models]
        counts = []
        for flag in ("0", "1"):
            monkeypatch.setenv("MERGESEARCH_FUSED", flag)
            counts.append(ram._active_counts(deltas, epsilon))
        assert counts[0] == counts[1]
        assert all(u > 0 for u in counts[0][1]) or epsilon < 0


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("special", [False, True])
def test_compiled_sce_gives_the_torch_bits(monkeypatch, select_topk, special):
    """sce's erase: the sign elected on the unweighted (selected) task vectors, weights after
    the clamp, the divisor floored at 1e-6."""
    from mergesearch.merging.methods import get_method

    base, models = _family(10, special)
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        params = {"select_topk": select_topk}
        results.append(get_method("sce").fn(models, base, [{}] * 3, params, None))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(results[1], base)


@pytest.mark.parametrize("models", [1, 2, 3])
def test_compiled_variance_is_welfords_in_float64(monkeypatch, models):
    """sce's score (what its top-k ranks) on a block and on a strided sample, both ways."""
    from mergesearch.merging.methods import sce

    base, xs = _family(11, special=True)
    b = base.reshape(-1)
    deltas = [SP.Delta(x.reshape(-1), b, tuple(base.shape)) for x in xs[:models]]
    got = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        got.append([sce.variance(deltas, sl) for sl in (slice(100, 70_000), slice(3, None, 997))])
    for torch_pass, compiled_pass in zip(*got, strict=True):
        assert compiled_pass.dtype == torch.float32
        torch.testing.assert_close(compiled_pass, torch_pass, rtol=0, atol=0, equal_nan=True)
    assert models == 1 or got[1][0].count_nonzero() > 0
