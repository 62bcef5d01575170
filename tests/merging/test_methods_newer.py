"""The seven newer mergekit methods (multislerp, karcher, sce, nearswap, arcee_fusion, ram,
ramplus_tl): golden values from plain float64 references of their math (``docs/METHODS.md``), and
invariants.

Each ``ref_*`` works on whole tensors in numpy float64, with no blocks, Gram matrices or
selection tricks: the fast code must agree with the formula as written.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import selection as S
from tests.helpers.methods import ATOL, close, f64, rand, run


def fine_tunes(shape, n, seed=0, noise=0.1):
    """A base and ``n`` models near it (the situation every method is built for)."""
    base = rand(*shape, seed=seed)
    return base, [base + rand(*shape, seed=seed + 1 + i, scale=noise) for i in range(n)]


def weights(*ws):
    return [{"weight": w} for w in ws]


# --- multislerp ---------------------------------------------------------------------------------


def ref_multislerp(xs, ws, base=None, normalize=True, eps=1e-8):
    shape = tuple(xs[0].shape)
    if len(xs) == 1:
        return f64(xs[0])
    b = f64(base).ravel() if base is not None else 0.0
    vs = [f64(x).ravel() - b for x in xs]
    w = np.array(ws, dtype=np.float64)
    if normalize:
        w = w / w.sum()
    norms = [np.linalg.norm(v) for v in vs]
    units = [v / (n + eps) for v, n in zip(vs, norms, strict=True)]
    mean = sum(wi * u for wi, u in zip(w, units, strict=True))
    mean = mean / np.linalg.norm(mean)
    tangent = sum(wi * (u - np.dot(u, mean) * mean) for wi, u in zip(w, units, strict=True))
    size = np.linalg.norm(tangent) + eps
    out = mean * math.cos(size) + tangent * (math.sin(size) / size)
    out = out * float(np.dot(w, norms)) + b
    return out.reshape(shape)


@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_multislerp_golden(with_base, normalize):
    base, xs = fine_tunes((12, 10), 3, seed=1, noise=0.5)
    ws = [0.5, 0.2, 0.4]
    b = base if with_base else None
    out = run("multislerp", xs, base=b, per_model=weights(*ws), normalize_weights=normalize)
    close(out, ref_multislerp(xs, ws, b, normalize))


def test_multislerp_of_identical_models_is_that_model():
    x = rand(7, 9, seed=2)
    out = run("multislerp", [x, x.clone(), x.clone()], per_model=weights(0.2, 0.5, 0.3))
    torch.testing.assert_close(out, x)


def test_multislerp_weight_on_one_model_gives_that_model():
    base, xs = fine_tunes((6, 8), 3, seed=3, noise=0.3)
    for b in (None, base):
        out = run("multislerp", xs, base=b, per_model=weights(0.0, 1.0, 0.0))
        torch.testing.assert_close(out, xs[1])


def test_multislerp_is_symmetric_in_the_models():
    base, xs = fine_tunes((5, 11), 3, seed=4, noise=0.4)
    ws = [0.1, 0.6, 0.3]
    out = run("multislerp", xs, base=base, per_model=weights(*ws))
    order = [2, 0, 1]
    swapped = run(
        "multislerp", [xs[i] for i in order], base=base, per_model=weights(*[ws[i] for i in order])
    )
    torch.testing.assert_close(out, swapped)


def test_multislerp_one_model_is_returned_and_two_opposite_ones_lerp():
    base, (x,) = fine_tunes((4, 4), 1, seed=5)
    assert torch.equal(run("multislerp", [x], base=base, per_model=weights(0.3)), x)
    d = rand(4, 4, seed=6)
    out = run("multislerp", [base + d, base - d], base=base, per_model=weights(1.0, 1.0))
    torch.testing.assert_close(out, base)  # unit vectors cancel: lerp of the task vectors


def test_multislerp_refuses_cancelling_directions_and_zero_weight_sums():
    base, d = rand(6, seed=7), rand(6, seed=8)
    three = [base + d, base - d, base + d]  # weighted directions that cancel: no direction
    with pytest.raises(ConfigError, match="sum to zero"):
        run("multislerp", three, base=base, per_model=weights(1, 2, 1))
    with pytest.raises(ConfigError, match="normalize_weights"):
        run("multislerp", [base + d, base - d], base=base, per_model=weights(1.0, -1.0))


# --- karcher ------------------------------------------------------------------------------------


def ref_karcher(xs, max_iter=10, tol=1e-5):
    shape = tuple(xs[0].shape)
    vs = [f64(x).ravel() for x in xs]
    norms = [np.linalg.norm(v) for v in vs]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return np.zeros(shape)
    units = [vs[i] / norms[i] for i in valid]
    alpha = 1.0 / len(valid)
    mean = sum(alpha * u for u in units)
    length = np.linalg.norm(mean)
    mean = units[0].copy() if length < tol else mean / length
    for _ in range(max_iter):
        tangent = np.zeros_like(mean)
        for u in units:
            cos = min(1.0, max(-1.0, float(np.dot(mean, u))))
            theta = math.acos(cos)
            if theta >= tol:
                tangent += alpha * theta / math.sin(theta) * (u - cos * mean)
        step = np.linalg.norm(tangent)
        if step < tol:
            break
        mean = math.cos(step) * mean + math.sin(step) * tangent / step
        length = np.linalg.norm(mean)
        if length > tol:
            mean = mean / length
    return (sum(norms) / len(xs) * mean).reshape(shape)


@pytest.mark.parametrize(("max_iter", "tol"), [(0, 1e-5), (1, 1e-5), (10, 1e-5), (50, 1e-9)])
def test_karcher_golden(max_iter, tol):
    _, xs = fine_tunes((9, 13), 3, seed=10, noise=1.5)  # far apart: iterations matter
    out = run("karcher", xs, max_iter=max_iter, tol=tol)
    close(out, ref_karcher(xs, max_iter, tol))


def test_karcher_iterates_toward_the_riemannian_mean():
    _, xs = fine_tunes((40,), 3, seed=11, noise=2.0)
    extrinsic = run("karcher", xs, max_iter=0)
    converged = run("karcher", xs, max_iter=100, tol=1e-12)
    assert (extrinsic - converged).abs().max() > 1e-3
    # at the Karcher mean the log-map tangents of the unit inputs sum to zero
    m = f64(converged) / np.linalg.norm(f64(converged))
    tangent = np.zeros_like(m)
    for x in xs:
        u = f64(x) / np.linalg.norm(f64(x))
        theta = math.acos(min(1.0, float(np.dot(m, u))))
        tangent += theta / math.sin(theta) * (u - np.dot(m, u) * m)
    assert np.linalg.norm(tangent) < 1e-5


def test_karcher_of_identical_models_is_that_model_and_order_does_not_matter():
    x = rand(5, 6, seed=12)
    torch.testing.assert_close(run("karcher", [x, x.clone(), x.clone()]), x)
    _, xs = fine_tunes((5, 6), 3, seed=13, noise=0.8)
    torch.testing.assert_close(run("karcher", xs), run("karcher", [xs[2], xs[0], xs[1]]))


def test_karcher_zero_and_single_inputs():
    zero = torch.zeros(3, 3)
    assert torch.equal(run("karcher", [zero, zero.clone()]), zero)
    x = rand(3, 3, seed=14)
    assert torch.equal(run("karcher", [x]), x)
    # a zero model takes no part in the direction but counts in the mean norm
    close(run("karcher", [x, zero]), ref_karcher([x, zero]))


def test_karcher_max_iter_must_be_a_whole_number():
    xs = [rand(4, seed=15), rand(4, seed=16)]
    with pytest.raises(ConfigError, match="max_iter"):
        run("karcher", xs, max_iter=2.5)
    torch.testing.assert_close(run("karcher", xs, max_iter=3.0), run("karcher", xs, max_iter=3))


# --- sce ----------------------------------------------------------------------------------------


def ref_sce(xs, base, select_topk=1.0):
    shape = tuple(base.shape)
    b = f64(base).ravel()
    ds = np.stack([f64(x).ravel() - b for x in xs])
    n = b.size
    if select_topk < 1:
        var = ds.var(axis=0)
        k = int(np.count_nonzero(var) * select_topk) if select_topk > 0 else 0
        order = sorted(range(n), key=lambda i: (-var[i], i))  # equal variances: lowest index
        keep = np.zeros(n, dtype=bool)
        keep[order[:k]] = True
        ds = ds * keep
    energy = (ds**2).mean(axis=1)
    w = np.full(len(xs), 1.0 / len(xs)) if abs(energy.sum()) < 1e-6 else energy / energy.sum()
    positive = ds.sum(axis=0) >= 0
    agree = np.where(positive, ds > 0, ds < 0)
    erased = w[:, None] * agree
    out = b + (ds * erased).sum(axis=0) / np.maximum(erased.sum(axis=0), 1e-6)
    return out.reshape(shape)


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("n_models", [1, 2, 3])
def test_sce_golden(select_topk, n_models):
    base, xs = fine_tunes((10, 12), n_models, seed=20, noise=0.05)
    out = run("sce", xs, base=base, select_topk=select_topk)
    close(out, ref_sce(xs, base, select_topk))


def test_sce_switches_to_equal_weights_when_task_vectors_are_tiny():
    base = rand(30, 30, seed=21, scale=0.01)
    xs = [base + rand(30, 30, seed=s, scale=1e-4) for s in (1, 2)]  # energies ~1e-8 < 1e-6
    xs[1] = base + 3 * (xs[1] - base)
    out = run("sce", xs, base=base)
    close(out, ref_sce(xs, base), atol=1e-9)
    # energy weights (0.1 / 0.9) would give another merge
    ds = [f64(x - base) for x in xs]
    assert np.abs((f64(out) - f64(base)) - (0.1 * ds[0] + 0.9 * ds[1])).max() > 1e-6


def test_sce_identical_inputs_give_the_input_back():
    base, (x,) = fine_tunes((6, 7), 1, seed=22)
    torch.testing.assert_close(run("sce", [base, base.clone()], base=base, select_topk=0.5), base)
    torch.testing.assert_close(run("sce", [x, x.clone(), x.clone()], base=base), x)
    # models that agree have no variance to select: with select_topk < 1 nothing is kept
    torch.testing.assert_close(run("sce", [x, x.clone()], base=base, select_topk=0.5), base)
    assert run("sce", [], base=base) is base


def test_sce_is_symmetric_in_the_models():
    base, xs = fine_tunes((8, 9), 3, seed=23)
    out = run("sce", xs, base=base, select_topk=0.4)
    torch.testing.assert_close(out, run("sce", xs[::-1], base=base, select_topk=0.4))


def test_sce_large_tensor_selects_exactly_what_a_whole_tensor_top_k_selects():
    n = S.SAMPLE_MIN_NUMEL + 12345  # the sampled path of the threshold search
    base, xs = fine_tunes((n,), 3, seed=24, noise=0.01)
    out = run("sce", xs, base=base, select_topk=0.3)
    ds = torch.stack([x - base for x in xs])
    var = torch.var(ds, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * 0.3)
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.topk(var, k).indices] = True  # distinct variances: any top-k is the top-k
    ds = ds * keep
    energy = ds.square().mean(dim=1)
    w = (energy / energy.sum())[:, None]
    agree = torch.where(ds.sum(0) >= 0, ds > 0, ds < 0)
    expected = base + (ds * w * agree).sum(0) / (w * agree).sum(0).clamp(min=1e-6)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def ref_sce_with_ties(base, xs, select_topk):
    """sce as written, whole tensors: equal variances at the cut go lowest index first."""
    ds = torch.stack([x - base for x in xs])
    var = torch.var(ds, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * select_topk)
    keep = torch.zeros(var.numel(), dtype=torch.bool)
    keep[torch.sort(var, descending=True, stable=True).indices[:k]] = True
    ds = ds * keep
    w = (ds.square().mean(dim=1) / ds.square().mean(dim=1).sum())[:, None]
    agree = torch.where(ds.sum(0) >= 0, ds > 0, ds < 0)
    return base + (ds * w * agree).sum(0) / (w * agree).sum(0).clamp(min=1e-6)


def test_sce_on_coarse_task_vectors_keeps_ties_lowest_index_first():
    """Task vectors on a grid (as 16-bit fine-tunes give): many equal variances, and the top-k
    cuts one run of them, through the sampled one-pass selection of a large tensor."""
    n = S.SAMPLE_MIN_NUMEL + 4321
    base = rand(n, seed=25)
    grid = torch.Generator().manual_seed(26)
    xs = [base + torch.randint(-2, 3, (n,), generator=grid).float() / 64 for _ in range(3)]
    out = run("sce", xs, base=base, select_topk=0.35)
    torch.testing.assert_close(out, ref_sce_with_ties(base, xs, 0.35), rtol=0, atol=1e-6)


# --- nearswap -----------------------------------------------------------------------------------


def ref_nearswap(base, x, t):
    b, o = f64(base), f64(x)
    w = np.clip(t / np.maximum(np.abs(b - o), 1e-6), 0, 1)
    return w * o + (1 - w) * b


@pytest.mark.parametrize("t", [0.0, 1e-3, 0.05, 0.5, 10.0])
def test_nearswap_golden(t):
    base, (x,) = fine_tunes((11, 7), 1, seed=30, noise=0.2)
    close(run("nearswap", [x], base=base, t=t), ref_nearswap(base, x, t))


def test_nearswap_endpoints_and_identical_inputs():
    base, (x,) = fine_tunes((5, 5), 1, seed=31)
    assert torch.equal(run("nearswap", [x], base=base, t=0.0), base)
    torch.testing.assert_close(run("nearswap", [x], base=base, t=1e6), x)
    torch.testing.assert_close(run("nearswap", [base.clone()], base=base, t=0.3), base)


def test_nearswap_takes_exactly_two_models():
    base, xs = fine_tunes((3,), 2, seed=32)
    with pytest.raises(ConfigError, match="exactly two"):
        run("nearswap", xs, base=base, t=0.1)


# --- arcee_fusion -------------------------------------------------------------------------------


def ref_arcee_fusion(base, x):
    b, o = f64(base), f64(x)
    rows_b = b.reshape(-1, b.shape[-1] if b.ndim else 1)
    rows_o = o.reshape(rows_b.shape)

    def softmax(r):
        e = np.exp(r - r.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, q = softmax(rows_o) + 1e-8, softmax(rows_b) + 1e-8
    kl = (p * np.log(p / q)).sum(axis=-1, keepdims=True)
    importance = (np.abs(rows_o - rows_b) * kl).ravel()
    ordered = np.sort(importance)
    n = ordered.size
    q1, med, q3 = (ordered[(k * (n - 1)) // 4] for k in (1, 2, 3))
    keep = (importance >= med + 1.5 * (q3 - q1)).reshape(b.shape)
    return np.where(keep, o, b)


@pytest.mark.parametrize("shape", [(16, 24), (40,), (3, 5, 8)])
def test_arcee_fusion_golden(shape):
    base, (x,) = fine_tunes(shape, 1, seed=40, noise=0.3)
    out = run("arcee_fusion", [x], base=base)
    expected = ref_arcee_fusion(base, x)
    # a float64 importance can order elements within a float32 rounding of the threshold
    # differently: allow a handful of such elements, compare the rest exactly
    differ = np.abs(f64(out) - expected) > ATOL
    assert differ.sum() <= 2
    assert 0 < (f64(out) == f64(x)).mean() < 1


def test_arcee_fusion_identical_inputs_give_the_input_back():
    x = rand(6, 9, seed=41)
    assert torch.equal(run("arcee_fusion", [x.clone()], base=x), x)


def test_arcee_fusion_large_tensor_uses_exact_quartiles():
    rows = S.SAMPLE_MIN_NUMEL // 64 + 7  # over 1e6 elements: mergekit would sample here
    base, (x,) = fine_tunes((rows, 64), 1, seed=42, noise=0.1)
    out = run("arcee_fusion", [x], base=base)
    torch.testing.assert_close(run("arcee_fusion", [x], base=base), out, rtol=0, atol=0)
    # the same rule from a whole-tensor sort, in the same float32 arithmetic
    p = torch.softmax(x, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    importance = (x - base).abs() * (p * torch.log(p / q)).sum(-1, keepdim=True)
    ordered = importance.reshape(-1).sort().values
    n = ordered.numel()
    q1, med, q3 = (ordered[(k * (n - 1)) // 4] for k in (1, 2, 3))
    keep = importance >= med + 1.5 * (q3 - q1)
    assert torch.equal(out, base + (x - base) * keep)


# --- ram, ramplus_tl ----------------------------------------------------------------------------


def ref_ram(xs, base, epsilon=1e-5, r=None, alpha=None):
    b = f64(base).ravel()
    ds = np.stack([f64(x).ravel() - b for x in xs])
    active = np.abs(ds) > epsilon
    count = active.sum(axis=0)
    scales = np.ones(len(xs))
    if r is not None:
        shared = (active & (count > 1)).sum(axis=1)
        unique = (active & (count == 1)).sum(axis=1)
        scales = 1 + r * np.clip(shared / np.maximum(unique, epsilon), 0, alpha)
    terms = np.where(count == 1, ds * scales[:, None], ds / np.maximum(count, 1)) * active
    return (b + terms.sum(axis=0)).reshape(tuple(base.shape))


@pytest.mark.parametrize("epsilon", [1e-5, 0.05, 0.2])
@pytest.mark.parametrize("n_models", [1, 2, 3])
def test_ram_golden(epsilon, n_models):
    base, xs = fine_tunes((13, 8), n_models, seed=50, noise=0.1)
    close(run("ram", xs, base=base, epsilon=epsilon), ref_ram(xs, base, epsilon))


@pytest.mark.parametrize(
    ("r", "alpha", "epsilon"), [(0.1, 0.2, 1e-5), (1.0, 5.0, 0.1), (0.5, 0.0, 0.2)]
)
@pytest.mark.parametrize("n_models", [1, 2, 3])
def test_ramplus_tl_golden(r, alpha, epsilon, n_models):
    base, xs = fine_tunes((13, 8), n_models, seed=51, noise=0.1)
    out = run("ramplus_tl", xs, base=base, r=r, alpha=alpha, epsilon=epsilon)
    close(out, ref_ram(xs, base, epsilon, r, alpha))


def test_ram_activity_is_strictly_above_epsilon():
    """Changes of exactly +-epsilon are inactive, larger ones active, in 16-bit inputs too."""
    base = torch.zeros(4, 3)
    xs = [
        torch.tensor([[0.25, -0.25, 0.5], [0.5, 0.0, -0.5], [0.25, 0.5, 0.0], [-1.0, 0.25, 0.5]]),
        torch.tensor([[0.5, 0.25, 0.0], [-0.5, 0.5, -0.25], [0.0, 0.5, 1.0], [0.25, -0.25, 0.5]]),
    ]
    for dtype in (torch.float32, torch.bfloat16):
        low = [x.to(dtype) for x in xs]
        out = run("ramplus_tl", low, base=base.to(dtype), epsilon=0.25, r=1.0, alpha=5.0)
        close(out.float(), ref_ram(xs, base, 0.25, 1.0, 5.0))


def test_ramplus_tl_with_epsilon_zero_and_no_unique_change():
    """Every model changes every element: no unique change, so the overlap ratio divides by
    max(0, 0); the merge is the plain average of the task vectors, not an error."""
    base, xs = fine_tunes((13, 8), 3, seed=53, noise=0.1)
    out = run("ramplus_tl", xs, base=base, epsilon=0.0, r=0.5, alpha=0.2)
    close(out, f64(base) + sum(f64(x) - f64(base) for x in xs) / 3)


@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
def test_ram_invariants(name):
    base, xs = fine_tunes((9, 9), 3, seed=52)
    # no change anywhere: the base; the same change in every model: that model
    torch.testing.assert_close(run(name, [base, base.clone()], base=base), base)
    torch.testing.assert_close(run(name, [xs[0], xs[0].clone(), xs[0].clone()], base=base), xs[0])
    # one model: its changes above epsilon, whole (a unique change with no overlap: lambda 1)
    torch.testing.assert_close(run(name, [xs[0]], base=base), xs[0])
    # symmetric in the models
    torch.testing.assert_close(
        run(name, xs, base=base, epsilon=0.1), run(name, xs[::-1], base=base, epsilon=0.1)
    )
    assert run(name, [], base=base) is base


def test_multislerp_gives_the_base_where_no_model_moved_a_tensor():
    from mergesearch.merging.methods import get_method

    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    method = get_method("multislerp")
    per_model = [{"weight": 1.0}, {"weight": 2.0}, {"weight": 1.0}]
    params = {"normalize_weights": True, "eps": 1e-8}
    out = method.fn([base.clone(), base.clone(), base.clone()], base, per_model, params, None)
    assert torch.equal(out, base)
