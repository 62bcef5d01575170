"""The task-arithmetic family against a slow reference of docs/METHODS.md.

Random sparsifiers are pinned by replaying the documented draw protocol with the same seed:
for each model in config order whose density is below 1, one ``torch.rand(shape)`` from the
method's generator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods.draws import Draws
from tests.helpers.methods import close, f64, rand, run

SHAPE = (6, 9)


def ref_magnitude_keep(d: np.ndarray, density: float) -> np.ndarray:
    flat = d.ravel()
    n = flat.size
    order = sorted(range(n), key=lambda i: (-abs(flat[i]), i))
    keep = np.zeros(n, dtype=bool)
    for i in order[: math.floor(density * n)]:
        keep[i] = True
    return keep.reshape(d.shape)


def ref_breadcrumbs_keep(d: np.ndarray, density: float, gamma: float) -> np.ndarray:
    flat = d.ravel()
    n = flat.size
    keep_n, top = math.floor(density * n), math.floor(gamma * n)
    bottom = n - keep_n - top
    if bottom < 0:
        top, bottom = top + bottom, 0
    # ascending magnitude; among equal magnitudes the higher index ranks lower
    ascending = sorted(range(n), key=lambda i: (abs(flat[i]), -i))
    keep = np.zeros(n, dtype=bool)
    for i in ascending[bottom : n - top]:
        keep[i] = True
    return keep.reshape(d.shape)


def ref_della_keep(d: np.ndarray, density: float, epsilon: float, draws: np.ndarray):
    rows = d.reshape(-1, d.shape[-1])
    u = draws.reshape(rows.shape)
    keep = np.zeros(rows.shape, dtype=bool)
    width = rows.shape[1]
    for r in range(rows.shape[0]):
        ascending = sorted(range(width), key=lambda i: (abs(rows[r, i]), i))
        for rank, i in enumerate(ascending):
            p = density - epsilon + 2 * epsilon * rank / (width - 1)
            keep[r, i] = u[r, i] < p
    return keep.reshape(d.shape)


def ref_gta(xs, base, per_model, *, sparsifier, consensus, normalize, rescale, lam, seed=None):
    """The family's steps in docs/METHODS.md, elementwise in float64."""
    b = f64(base).ravel()
    gen = Draws(seed) if seed is not None else None
    deltas, weights = [], []
    for x, p in zip(xs, per_model, strict=True):
        d32 = (x - base).numpy()  # the deltas are formed in the compute dtype
        d = d32.astype(np.float64)
        density = p.get("density", 1.0)
        if sparsifier is not None and density < 1:
            if sparsifier == "magnitude":
                keep = ref_magnitude_keep(d32, density)
            elif sparsifier == "breadcrumbs":
                keep = ref_breadcrumbs_keep(d32, density, p.get("gamma", 0.01))
            elif sparsifier == "random":
                u = gen.uniform(base.numel()).double().numpy()
                keep = u.reshape(base.shape) < density  # exact: in float64
            else:
                draws = gen.uniform(base.numel()).numpy().reshape(base.shape)
                keep = ref_della_keep(d32, density, p.get("epsilon", 0.15), draws)
            kept = np.where(keep, d, 0.0)
            before, after = np.abs(d).sum(), np.abs(kept).sum()
            if rescale and before >= 1e-7 and after >= 1e-7:
                kept = kept * before / after
            d = kept
        deltas.append(d.ravel())
        weights.append(p["weight"])
    out = np.empty_like(b)
    for i in range(b.size):
        D = [w * d[i] for w, d in zip(weights, deltas, strict=True)]
        if consensus:
            sign = 1.0 if sum(D) >= 0 else -1.0
            agree = [Dj != 0 and np.sign(Dj) == sign for Dj in D]
            mixed = sum(Dj for Dj, a in zip(D, agree, strict=True) if a)
            divisor = sum(w for w, a in zip(weights, agree, strict=True) if a) or 1.0
        else:
            mixed = sum(D)
            divisor = sum(weights)
            divisor = divisor if abs(divisor) >= 1e-8 else 1.0
        if normalize:
            mixed /= divisor
        out[i] = b[i] + lam * mixed
    return out.reshape(tuple(base.shape))


DEFAULTS = {
    # name: sparsifier, consensus, normalize, rescale
    "task_arithmetic": (None, False, False, False),
    "ties": ("magnitude", True, True, False),
    "dare_linear": ("random", False, False, True),
    "dare_ties": ("random", True, False, True),
    "breadcrumbs": ("breadcrumbs", False, False, False),
    "breadcrumbs_ties": ("breadcrumbs", True, False, False),
    "della": ("della", True, True, True),
    "della_linear": ("della", False, False, True),
}


def models(n=3, shape=SHAPE):
    base = rand(*shape, seed=100)
    return [base + rand(*shape, seed=101 + i) for i in range(n)], base


PER_MODEL = [
    {"weight": 0.7, "density": 0.5, "gamma": 0.1, "epsilon": 0.2},
    {"weight": 0.4, "density": 0.8, "gamma": 0.05, "epsilon": 0.1},
    {"weight": -0.3, "density": 0.3, "gamma": 0.2, "epsilon": 0.25},
]


@pytest.mark.parametrize(
    ("flip", "seed"), [(False, 7), (True, 8)], ids=["defaults", "every_switch_flipped"]
)
@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_golden(name, flip, seed):
    """Each name against the reference with its own defaults, and with normalize and rescale
    both flipped and lambda changed (switches passed only then: the defaults are under test)."""
    sparsifier, consensus, normalize, rescale = DEFAULTS[name]
    xs, base = models()
    gen = Draws(seed)
    lam = 1.0
    if flip:
        normalize, rescale, lam = not normalize, not rescale, 0.6
    flipped = {"normalize": normalize, "rescale": rescale, "lambda": lam} if flip else {}
    out = run(name, xs, base=base, per_model=PER_MODEL, generator=gen, **flipped)
    expected = ref_gta(
        xs,
        base,
        PER_MODEL,
        sparsifier=sparsifier,
        consensus=consensus,
        normalize=normalize,
        rescale=rescale,
        lam=lam,
        seed=seed,
    )
    close(out, expected)


def test_task_arithmetic_defaults_are_a_weighted_sum_not_an_average():
    xs, base = models(2)
    out = run("task_arithmetic", xs, base=base, per_model=[{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(out, base + (xs[0] - base) + (xs[1] - base))
    scaled = run(
        "task_arithmetic",
        xs,
        base=base,
        per_model=[{"weight": 0.5}, {"weight": 2.0}],
        **{"lambda": 0.5},
    )
    torch.testing.assert_close(scaled, base + 0.5 * (0.5 * (xs[0] - base) + 2 * (xs[1] - base)))


def test_task_arithmetic_normalize_divides_by_weight_sum_and_ignores_a_zero_sum():
    xs, base = models(2)
    pm = [{"weight": 1.0}, {"weight": 3.0}]
    out = run("task_arithmetic", xs, base=base, per_model=pm, normalize=True)
    torch.testing.assert_close(out, base + ((xs[0] - base) + 3 * (xs[1] - base)) / 4)
    # the doc's rule for the family: a near-zero divisor is replaced by 1, not an error
    pm = [{"weight": 1.0}, {"weight": -1.0}]
    out = run("task_arithmetic", xs, base=base, per_model=pm, normalize=True)
    torch.testing.assert_close(out, base + (xs[0] - xs[1]))


def test_task_arithmetic_ignores_density_like_mergekit():
    xs, base = models(1)
    dense = run("task_arithmetic", xs, base=base, per_model=[{"weight": 1.0}])
    sparse = run("task_arithmetic", xs, base=base, per_model=[{"weight": 1.0, "density": 0.1}])
    torch.testing.assert_close(dense, sparse)


def test_no_other_models_returns_the_base():
    base = rand(*SHAPE, seed=1)
    for name in DEFAULTS:
        torch.testing.assert_close(run(name, [], base=base, per_model=[]), base)


def test_ties_with_one_model_and_density_1_equals_task_arithmetic():
    xs, base = models(1)
    pm = [{"weight": 0.8}]
    ties = run("ties", xs, base=base, per_model=pm, normalize=False)
    ta = run("task_arithmetic", xs, base=base, per_model=pm)
    torch.testing.assert_close(ties, ta)
    # and with its default normalize: true the weight divides out where the delta is non-zero
    torch.testing.assert_close(run("ties", xs, base=base, per_model=pm), xs[0])


def test_ties_sign_election_by_hand():
    base = torch.zeros(4)
    xs = [torch.tensor([1.0, -2.0, 0.0, 3.0]), torch.tensor([-3.0, 1.0, 0.0, -3.0])]
    pm = [{"weight": 1.0}, {"weight": 1.0}]
    out = run("ties", xs, base=base, per_model=pm)
    # sums: -2 -> elect -, -1 -> elect -, 0 -> elect + but nobody is non-zero, 0 -> elect +
    torch.testing.assert_close(out, torch.tensor([-3.0, -2.0, 0.0, 3.0]))


def test_int8_mask_is_accepted_and_changes_nothing():
    xs, base = models()
    a = run("ties", xs, base=base, per_model=PER_MODEL)
    b = run("ties", xs, base=base, per_model=PER_MODEL, int8_mask=True)
    torch.testing.assert_close(a, b)


def test_ties_density_too_small_is_a_config_error():
    xs, base = models(1)
    with pytest.raises(ConfigError, match="density"):
        run("ties", xs, base=base, per_model=[{"weight": 1.0, "density": 0.01}])


def test_della_bounds_are_config_errors_naming_epsilon():
    xs, base = models(1)
    for density, epsilon in [(0.1, 0.1), (0.9, 0.1), (0.5, 0.6)]:
        pm = [{"weight": 1.0, "density": density, "epsilon": epsilon}]
        with pytest.raises(ConfigError, match="epsilon"):
            run("della", xs, base=base, per_model=pm, generator=Draws(0))


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_reproduce_with_the_same_seed(name):
    xs, base = models()

    def merged(seed):
        gen = Draws(seed)
        return run(name, xs, base=base, per_model=PER_MODEL, generator=gen)

    assert torch.equal(merged(3), merged(3))
    assert not torch.equal(merged(3), merged(4))


def test_bfloat16_family_stays_close_to_float32():
    xs, base = models()
    pm = [{**p, "density": 1.0} for p in PER_MODEL]
    for name in ("task_arithmetic", "ties"):
        f32 = run(name, xs, base=base, per_model=pm)
        bf16 = run(
            name,
            [x.to(torch.bfloat16) for x in xs],
            base=base.to(torch.bfloat16),
            per_model=pm,
        )
        assert bf16.dtype == torch.bfloat16
        torch.testing.assert_close(bf16.float(), f32, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_divides_by_exactly_the_weight_of_a_lone_agreeing_model(dtype):
    """Where only the model of weight 0.1 agrees, the divisor is that weight as the dtype holds
    it (0.1 in float64 is not float32's 0.1), and the result is base + d exactly; where no
    model agrees (both deltas 0) the result is the base."""
    base = torch.zeros(4, dtype=dtype)
    lone = torch.tensor([1.0, 2.0, 0.5, 0.0], dtype=dtype)  # D_0 = 0.1 d wins the sign vote
    other = torch.tensor([-0.1, -0.2, -0.05, 0.0], dtype=dtype)  # D_1 = -0.07 d disagrees
    per_model = [{"weight": 0.1, "density": 1.0}, {"weight": 0.7, "density": 1.0}]
    out = run("ties", [base + lone, base + other], base=base, per_model=per_model)
    expected = (lone * 0.1) / torch.tensor(0.1, dtype=dtype)
    assert torch.equal(out, base + expected)
    assert out[3] == 0
