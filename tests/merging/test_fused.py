"""The compiled loops (``fused``, ``fused_ram``, ``fused_sce``, ``fused_angles``) against the torch
passes they replace: the same bits for every variant, special values included, and the same
random stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergesearch.merging.methods import compiled
from mergesearch.merging.methods import fused_angles as FA
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import selection as S
from mergesearch.merging.methods import sparsifiers as SP
from mergesearch.merging.methods import task_arithmetic as TA
from mergesearch.merging.methods.base import get_method
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


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1])
def test_compiled_sce_selection_and_energies_are_the_torch_pass(monkeypatch, select_topk):
    """The pass that marks sce's selection (ties at the cut lowest index first: the coarse
    grid puts the cut inside runs of equal variances) and sums each model's selected energy."""
    from mergesearch.merging.methods import sce

    base, xs = _family(12, special=False)
    b = base.reshape(-1)
    deltas = [SP.Delta(x.reshape(-1), b, tuple(base.shape)) for x in xs]
    n = b.numel()
    got = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        rule = sce.select(deltas, select_topk)
        keep = SP.Stored(torch.empty((n + 7) // 8, dtype=torch.uint8)) if rule else None
        got.append((rule, keep, sce._selected_energies(deltas, rule, keep)))
    (rule, keep, energies), (rule_c, keep_c, energies_c) = got
    assert rule == rule_c and energies_c == pytest.approx(energies, rel=1e-12)
    if select_topk < 1:
        assert 0 < rule.tie_limit < n and torch.equal(keep.bits, keep_c.bits)
        ties_at_cut = sce.variance(deltas, slice(None)) == rule.value
        assert int(ties_at_cut.sum()) > 1  # the cut falls inside a run of equal variances


def test_compiled_sce_band_pass_on_a_sampled_tensor_gives_the_torch_bits(monkeypatch):
    """Past ``SAMPLE_MIN_NUMEL`` sce brackets its cut from a sample and takes the band in one
    pass; the compiled variance's band pass must count and gather what NumPy's does."""
    from functools import partial

    from mergesearch.merging.methods import fused_sce, sce

    g = torch.Generator().manual_seed(13)
    shape = (S.SAMPLE_MIN_NUMEL // 512 + 3, 512)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    steps = [torch.randint(-6, 7, shape, generator=g).float() * 0.125 for _ in range(3)]
    models = [(base.float() + step).to(torch.bfloat16) for step in steps]
    calls = []
    original = fused_sce.variance_band
    monkeypatch.setattr(fused_sce, "variance_band", lambda *a: calls.append(a) or original(*a))
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        results.append(get_method("sce").fn(models, base, [{}] * 3, {"select_topk": 0.3}, None))
    assert len(calls) == 1  # the compiled pass ran, once
    assert torch.equal(results[1], results[0]) and not torch.equal(results[1], base)
    # the pass itself against NumPy's, a NaN variance (an infinite task vector) included
    models[0].view(-1)[5::100_003] = float("inf")
    flat = [x.reshape(-1) for x in models]
    b = base.reshape(-1)
    deltas = [SP.Delta(x, b, tuple(shape)) for x in flat]
    lo, hi = 0.01, 0.02
    [(above, band)], nonzero = S._band_pass(partial(sce.variance, deltas), b.numel(), [(lo, hi)],
                                            count_nonzero=True)  # fmt: skip
    got_above, got_band, got_nonzero = original(b, flat, lo, hi)
    assert (got_above, got_nonzero) == (above, nonzero) and torch.equal(got_band, band)
    assert nonzero < b.numel() and 0 < band.numel() < b.numel() // 10


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


def _pair(seed: int, n: int, spread: float, special: bool):
    """Two bfloat16 vectors ``spread`` apart (relative) and a third as an origin; with
    ``special`` zeros, a huge entry and a NaN."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    b, o = (a + spread * torch.randn(n, generator=g) for _ in range(2))
    vectors = [v.to(torch.bfloat16) for v in (a, b, o)]
    if special:
        for i, v in enumerate(vectors):
            v[i::89] = 0.0
            v[3 + i :: 4099] = 3e38 if i else -3e38
        vectors[1][n // 2] = float("nan")
    return vectors


def _slerps(monkeypatch, f):
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        results.append(f())
    return results


@pytest.mark.parametrize("n", [1, 7, 31, 1000, 2 * S.BLOCK + 13])
@pytest.mark.parametrize("spread", [1e-3, 0.3, 3.0])
def test_compiled_slerps_give_the_torch_bits(monkeypatch, n, spread):
    """slerp and nuslerp over whole tensors (with and without an origin): the compiled dot
    products and combinations give the torch ops' bits, lerp's fallback (nearly parallel
    inputs at 1e-3) included, over block boundaries and vector-width tails."""
    a, b, o = _pair(n, n, spread, special=False)
    calls = {
        "slerp": lambda: P.slerp(0.3, a, b),
        "nuslerp": lambda: P.nuslerp(0.4, a, b, flatten=True, row_wise=False),
        "nuslerp over an origin": lambda: P.nuslerp(
            0.4, a, b, flatten=True, row_wise=False, origin=o
        ),
    }
    for name, f in calls.items():
        torch_out, compiled_out = _slerps(monkeypatch, f)
        assert torch_out.dtype == torch.bfloat16
        assert torch.equal(torch_out.view(torch.int16), compiled_out.view(torch.int16)), name


def test_compiled_slerp_specials_and_dots(monkeypatch):
    """NaN, zeros and 3e38 (whose square overflows float32 but not the float64 sums): the
    same values both ways (any NaN for a NaN), and the dot products agree to 4e-15 relative."""
    a, b, o = _pair(5, 2 * S.BLOCK + 3, 0.3, special=True)
    for f in (
        lambda: P.slerp(0.3, a, o),
        lambda: P.nuslerp(0.4, a, o, flatten=True, row_wise=False, origin=b),
    ):
        torch_out, compiled_out = _slerps(monkeypatch, f)
        torch.testing.assert_close(compiled_out, torch_out, rtol=0, atol=0, equal_nan=True)
    x, y = _pair(6, 3 * S.BLOCK + 1, 0.3, special=False)[:2]
    torch_gram, compiled_gram = _slerps(monkeypatch, lambda: P.gram([x, y]))
    exact = [float((u.double() * w.double()).sum()) for u, w in ((x, x), (y, y), (x, y))]
    for g in (torch_gram, compiled_gram):
        got = [float(g[0, 0]), float(g[1, 1]), float(g[0, 1])]
        assert got == pytest.approx(exact, rel=4e-15)
        assert float(g[1, 0]) == got[2]


def test_compiled_slerp_fuses_the_second_product_as_torch_add_does(monkeypatch):
    """``torch.add(a * c0, b, alpha=c1)`` rounds ``a * c0`` and fuses ``b * c1`` into the sum;
    rounding both products (what a plain loop would do) differs on about one element in 1e5
    of this tensor, so this comparison would catch it."""
    a, b, _ = _pair(7, 1 << 20, 3.0, special=False)
    c0, c1 = 0.7123456789, 0.2876543211
    want = torch.add(a.float() * c0, b.float(), alpha=c1).to(torch.bfloat16)
    got = torch.empty_like(a)
    FA.slerp_mix(a, b, c0, c1, got)
    plain = (a.float() * np.float32(c0) + b.float() * np.float32(c1)).to(torch.bfloat16)
    assert not torch.equal(plain, want)  # the data tells the two roundings apart
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("round_offsets", [False, True])
@pytest.mark.parametrize("origin", [False, True])
def test_compiled_gram_is_the_torch_gram(monkeypatch, round_offsets, origin):
    """Four vectors' Gram matrix, offsets from an origin formed in float32 (multislerp,
    karcher) or in bfloat16 (nuslerp, model_stock), agrees to 4e-15 relative both ways;
    the rounded and float32 offsets do differ, so each mode is checked."""
    *vectors, last = _pair(8, 2 * S.BLOCK + 5, 0.3, False) + _pair(9, 2 * S.BLOCK + 5, 0.3, False)
    o = last if origin else None
    torch_gram, compiled_gram = _slerps(
        monkeypatch, lambda: P.gram(vectors, o, round_offsets=round_offsets)
    )
    assert torch_gram.shape == (5, 5)
    torch.testing.assert_close(compiled_gram, torch_gram, rtol=4e-15, atol=0)
    if origin:
        other = P.gram(vectors, o, round_offsets=not round_offsets)
        assert not torch.allclose(other, torch_gram, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    ("method", "special"),
    # multislerp refuses NaN task vectors (their unit sum is not finite): no special case
    [
        ("model_stock", False),
        ("model_stock", True),
        ("multislerp", False),
        ("karcher", False),
        ("karcher", True),
    ],
)
def test_compiled_gram_methods_give_the_torch_bits(monkeypatch, method, special):
    """model_stock (compiled Gram and combination) and multislerp / karcher (compiled Gram):
    the same result both ways, over block boundaries, NaN and 3e38 included."""
    base, x, y = _pair(10, 2 * S.BLOCK + 7, 0.3, special=special)
    z = _pair(11, 2 * S.BLOCK + 7, 0.3, special=False)[0]
    spec = get_method(method)
    params = dict(spec.global_params)
    per_model = [{"weight": w} for w in (0.5, 0.3, 0.2)]
    results = _slerps(
        monkeypatch,
        lambda: spec.fn([x, y, z], None if method == "karcher" else base, per_model, params, None),
    )
    assert results[0].dtype == torch.bfloat16
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0, equal_nan=True)


def test_compiled_stock_mix_rounds_each_product_as_torch_does():
    """model_stock's ``ratio * average + (1 - ratio) * base``: two rounded float32 products
    and a sum, as the torch ops round them. A fused second product differs on about five
    elements in 1e6 here, so 4e6 elements would show it."""
    g = torch.Generator().manual_seed(12)
    n = 1 << 22
    base = torch.randn(n, generator=g).to(torch.bfloat16)
    models = [(base.float() + torch.randn(n, generator=g)).to(torch.bfloat16) for _ in range(3)]
    ratio = torch.tensor([0.7123], dtype=torch.float32)
    want = (ratio * (sum(models) / 3) + (1 - ratio) * base).to(torch.bfloat16)
    got = torch.empty_like(base)
    FA.stock_mix(models, base, float(ratio), got)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("origin", [False, True])
def test_compiled_combine_rounds_as_the_torch_ops(monkeypatch, origin):
    """multislerp's and karcher's ``o + sum c_i (v_i - o)``: the first product rounded, the
    later ones fused into the running sum, ``o`` last (4e6 elements: a rounded second product
    differs on a few of them)."""
    vectors = _pair(13, 1 << 22, 1.0, special=False)
    o = _pair(14, 1 << 22, 1.0, special=False)[0] if origin else None
    coefficients = [0.7123456789, -0.2876543211, 1.3e-3]
    torch_out, compiled_out = _slerps(monkeypatch, lambda: P.combine(vectors, coefficients, o))
    assert torch.equal(torch_out.view(torch.int16), compiled_out.view(torch.int16))
