"""Merge methods: registry tables, invariants, and golden values from slow reference code.

Each ``ref_*`` function below is a deliberately plain re-implementation of docs/METHODS.md
(float64 numpy, Python loops over elements) used to pin the fast torch code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import METHODS, REQUIRED, BaseRole, get_method
from mergesearch.merging.methods.draws import Draws
from tests.helpers.methods import close, f64, rand, run

# --- registry ---------------------------------------------------------------------------------

GTA_GLOBALS = {"lambda": 1.0, "int8_mask": False}
EXPECTED = {
    # name: (base, per-model params, global params, min, max, random)
    "linear": (BaseRole.IGNORED, {"weight": REQUIRED}, {"normalize": True}, 1, None, False),
    "slerp": (BaseRole.REQUIRED, {}, {"t": REQUIRED}, 1, 1, False),
    "nuslerp": (
        BaseRole.OPTIONAL,
        {"weight": REQUIRED},
        {"nuslerp_flatten": True, "nuslerp_row_wise": False},
        2,
        2,
        False,
    ),
    "model_stock": (BaseRole.REQUIRED, {}, {"filter_wise": False}, 2, None, False),
    "passthrough": (BaseRole.IGNORED, {"scale": None}, {}, 1, 1, False),
    "multislerp": (
        BaseRole.OPTIONAL,
        {"weight": REQUIRED},
        {"normalize_weights": True, "eps": 1e-8},
        1,
        None,
        False,
    ),
    "karcher": (BaseRole.IGNORED, {}, {"max_iter": 10, "tol": 1e-5}, 1, None, False),
    "sce": (BaseRole.REQUIRED, {}, {"select_topk": 1.0, "int8_mask": False}, 0, None, False),
    "nearswap": (BaseRole.REQUIRED, {}, {"t": REQUIRED}, 1, 1, False),
    "arcee_fusion": (BaseRole.REQUIRED, {}, {}, 1, 1, False),
    "ram": (BaseRole.REQUIRED, {}, {"epsilon": 1e-5}, 0, None, False),
    "ramplus_tl": (
        BaseRole.REQUIRED,
        {},
        {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5},
        0,
        None,
        False,
    ),
}
for _name, _norm, _rescale, _extra, _random in [
    ("task_arithmetic", False, False, {}, False),
    ("ties", True, False, {}, False),
    ("dare_linear", False, True, {}, True),
    ("dare_ties", False, True, {}, True),
    ("breadcrumbs", False, False, {"gamma": 0.01}, False),
    ("breadcrumbs_ties", False, False, {"gamma": 0.01}, False),
    ("della", True, True, {"epsilon": 0.15}, True),
    ("della_linear", False, True, {"epsilon": 0.15}, True),
]:
    EXPECTED[_name] = (
        BaseRole.REQUIRED,
        {"weight": REQUIRED, "density": 1.0, **_extra},
        {"normalize": _norm, "rescale": _rescale, **GTA_GLOBALS},
        0,
        None,
        _random,
    )


def test_registry_holds_exactly_the_documented_methods():
    assert set(METHODS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_defaults_match_the_table(name):
    base, per_model, global_params, lo, hi, random = EXPECTED[name]
    m = get_method(name)
    assert m.name == name
    assert m.base is base
    assert dict(m.per_model_params) == per_model
    assert dict(m.global_params) == global_params
    assert (m.min_inputs, m.max_inputs, m.uses_randomness) == (lo, hi, random)


def test_unknown_method_is_a_config_error_listing_names():
    with pytest.raises(ConfigError, match="ties"):
        get_method("tie")


# --- linear -------------------------------------------------------------------------------------


def ref_linear(xs, ws, normalize):
    arrays = [f64(x).ravel() for x in xs]
    out = np.zeros_like(arrays[0])
    for i in range(out.size):
        out[i] = sum(w * a[i] for w, a in zip(ws, arrays, strict=True))
        if normalize:
            out[i] /= sum(ws)
    return out.reshape(tuple(xs[0].shape))


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_golden(normalize):
    xs = [rand(5, 7, seed=s) for s in range(3)]
    ws = [0.5, 1.25, -0.25]
    out = run("linear", xs, per_model=[{"weight": w} for w in ws], normalize=normalize)
    close(out, ref_linear(xs, ws, normalize))


def test_linear_of_identical_tensors_is_the_tensor():
    x = rand(4, 6)
    out = run("linear", [x, x.clone(), x.clone()], per_model=[{"weight": w} for w in (1, 2, 3)])
    torch.testing.assert_close(out, x)


def test_linear_rejects_zero_weight_sum_when_normalizing():
    xs = [rand(3, seed=1), rand(3, seed=2)]
    with pytest.raises(ConfigError, match="normalize"):
        run("linear", xs, per_model=[{"weight": 1.0}, {"weight": -1.0}])
    out = run("linear", xs, per_model=[{"weight": 1.0}, {"weight": -1.0}], normalize=False)
    torch.testing.assert_close(out, xs[0] - xs[1])


# --- slerp ----------------------------------------------------------------------------------------


def ref_slerp(t, v0, v1):
    a, b = f64(v0).ravel(), f64(v1).ravel()
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    ua = a / na if na > 1e-8 else a
    ub = b / nb if nb > 1e-8 else b
    dot = sum(x * y for x, y in zip(ua, ub, strict=True))
    if abs(dot) > 0.9995:
        out = (1 - t) * a + t * b
    else:
        theta = math.acos(dot)
        out = (
            math.sin((1 - t) * theta) / math.sin(theta) * a
            + math.sin(t * theta) / math.sin(theta) * b
        )
    return out.reshape(tuple(v0.shape))


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0, 1.4])
def test_slerp_golden(t):
    v0, v1 = rand(6, 5, seed=1), rand(6, 5, seed=2)
    close(run("slerp", [v1], base=v0, t=t), ref_slerp(t, v0, v1))


def test_slerp_endpoints_are_the_models():
    v0, v1 = rand(8, 3, seed=3), rand(8, 3, seed=4)
    torch.testing.assert_close(run("slerp", [v1], base=v0, t=0.0), v0)
    torch.testing.assert_close(run("slerp", [v1], base=v0, t=1.0), v1)


def test_slerp_nearly_parallel_falls_back_to_lerp():
    v0 = rand(50, seed=5)
    v1 = 2.0 * v0 + 1e-4 * rand(50, seed=6)  # |cos| > 0.9995, different lengths
    out = run("slerp", [v1], base=v0, t=0.25)
    torch.testing.assert_close(out, 0.75 * v0 + 0.25 * v1)
    anti = run("slerp", [-v0], base=v0, t=0.25)  # antiparallel: lerp too, not a NaN
    torch.testing.assert_close(anti, 0.5 * v0)


def test_slerp_zero_tensor_does_not_divide_by_zero():
    v0, v1 = torch.zeros(10), rand(10, seed=7)
    out = run("slerp", [v1], base=v0, t=0.5)
    assert torch.isfinite(out).all()
    close(out, ref_slerp(0.5, v0, v1))


def test_slerp_computes_in_float32_and_returns_input_dtype():
    v0, v1 = rand(64, 32, seed=8), rand(64, 32, seed=9)
    out = run("slerp", [v1.to(torch.bfloat16)], base=v0.to(torch.bfloat16), t=0.4)
    assert out.dtype == torch.bfloat16
    expected = ref_slerp(0.4, v0.to(torch.bfloat16), v1.to(torch.bfloat16))
    close(out, expected, atol=2e-2)  # one bf16 rounding of a float32 result


# --- nuslerp ----------------------------------------------------------------------------------


def ref_nuslerp_vectors(t, a, b):
    na = max(math.sqrt(sum(x * x for x in a)), 1e-7)
    nb = max(math.sqrt(sum(x * x for x in b)), 1e-7)
    cos = min(1.0, max(-1.0, sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)))
    theta = math.acos(cos)
    if abs(math.sin(theta)) < 1e-8:
        return (1 - t) * a + t * b
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def ref_nuslerp(w0, w1, x0, x1, base, flatten, row_wise):
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    a, b = f64(x0), f64(x1)
    if base is not None:
        a, b = a - f64(base), b - f64(base)
    if flatten:
        out = ref_nuslerp_vectors(t, a.ravel(), b.ravel()).reshape(a.shape)
    else:
        if row_wise:
            a, b = a.T, b.T
        out = np.stack([ref_nuslerp_vectors(t, ra, rb) for ra, rb in zip(a, b, strict=True)])
        if row_wise:
            out = out.T
    return out + (f64(base) if base is not None else 0)


@pytest.mark.parametrize(
    ("flatten", "row_wise", "with_base"),
    [(True, False, False), (False, False, False), (False, True, False), (False, False, True)],
)
def test_nuslerp_golden(flatten, row_wise, with_base):
    x0, x1, b = rand(4, 6, seed=10), rand(4, 6, seed=11), rand(4, 6, seed=12)
    base = b if with_base else None
    out = run(
        "nuslerp",
        [x0, x1],
        base=base,
        per_model=[{"weight": 1.0}, {"weight": 3.0}],
        nuslerp_flatten=flatten,
        nuslerp_row_wise=row_wise,
    )
    close(out, ref_nuslerp(1.0, 3.0, x0, x1, base, flatten, row_wise))


def test_nuslerp_weights_choose_the_endpoint_and_tiny_sums_mean_half():
    x0, x1 = rand(3, 5, seed=13), rand(3, 5, seed=14)
    only_first = run("nuslerp", [x0, x1], per_model=[{"weight": 2.0}, {"weight": 0.0}])
    torch.testing.assert_close(only_first, x0)
    only_second = run("nuslerp", [x0, x1], per_model=[{"weight": 0.0}, {"weight": 0.7}])
    torch.testing.assert_close(only_second, x1)
    cancelled = run("nuslerp", [x0, x1], per_model=[{"weight": 1.0}, {"weight": -1.0}])
    half = run("nuslerp", [x0, x1], per_model=[{"weight": 1.0}, {"weight": 1.0}])
    torch.testing.assert_close(cancelled, half)


def test_nuslerp_colinear_rows_lerp():
    x0 = rand(3, 4, seed=15)
    out = run(
        "nuslerp",
        [x0, 3 * x0],
        per_model=[{"weight": 1.0}, {"weight": 1.0}],
        nuslerp_flatten=False,
    )
    torch.testing.assert_close(out, 2 * x0)


def test_nuslerp_needs_exactly_two_models():
    with pytest.raises(ConfigError, match="two"):
        run("nuslerp", [rand(3)], per_model=[{"weight": 1.0}])


# --- model_stock ------------------------------------------------------------------------------


def ref_model_stock(xs, base, filter_wise):
    b = f64(base)
    rows_b = b.reshape(-1, b.shape[-1]) if filter_wise else b.reshape(1, -1)
    rows_x = [f64(x).reshape(rows_b.shape) for x in xs]
    n = len(xs)
    out = np.empty_like(rows_b)
    for r in range(rows_b.shape[0]):
        offs = [x[r] - rows_b[r] for x in rows_x]
        cosines = []
        for i in range(n):
            for j in range(i + 1, n):
                norm = max(np.linalg.norm(offs[i]) * np.linalg.norm(offs[j]), 1e-6)
                cosines.append(min(1.0, max(-1.0, float(offs[i] @ offs[j]) / norm)))
        c = sum(cosines) / len(cosines)
        t = n * c / (1 + (n - 1) * c)
        out[r] = t * sum(x[r] for x in rows_x) / n + (1 - t) * rows_b[r]
    return out.reshape(b.shape)


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_golden(filter_wise):
    base = rand(5, 8, seed=20)
    # correlated offsets so that t is well inside (0, 1)
    shared = rand(5, 8, seed=21)
    xs = [base + shared + 0.7 * rand(5, 8, seed=22 + i) for i in range(3)]
    out = run("model_stock", xs, base=base, filter_wise=filter_wise)
    close(out, ref_model_stock(xs, base, filter_wise))


def test_model_stock_filter_wise_treats_1d_as_one_row():
    base = rand(9, seed=30)
    xs = [base + rand(9, seed=31 + i) for i in range(2)]
    close(run("model_stock", xs, base=base, filter_wise=True), ref_model_stock(xs, base, False))


def test_model_stock_identical_models_give_that_model():
    base, x = rand(4, 4, seed=40), rand(4, 4, seed=41)
    torch.testing.assert_close(run("model_stock", [x, x.clone()], base=base), x)


def test_model_stock_opposite_offsets_stay_at_base():
    base, off = rand(6, seed=42), rand(6, seed=43)
    out = run("model_stock", [base + off, base - off], base=base)
    torch.testing.assert_close(out, base)


# --- passthrough --------------------------------------------------------------------------------


def test_passthrough_copies_or_scales():
    x = rand(3, 4, seed=50)
    torch.testing.assert_close(run("passthrough", [x]), x)
    torch.testing.assert_close(run("passthrough", [x], per_model=[{"scale": 0.5}]), 0.5 * x)
    with pytest.raises(ConfigError, match="exactly one"):
        run("passthrough", [x, x])


# --- every method -------------------------------------------------------------------------------

CALLS = {
    "linear": ({"weight": 0.6}, {}),
    "slerp": ({}, {"t": 0.3}),
    "nuslerp": ({"weight": 0.5}, {}),
    "model_stock": ({}, {}),
    "passthrough": ({}, {}),
    "task_arithmetic": ({"weight": 0.5}, {}),
    "ties": ({"weight": 0.5, "density": 0.5}, {}),
    "dare_linear": ({"weight": 0.5, "density": 0.5}, {}),
    "dare_ties": ({"weight": 0.5, "density": 0.5}, {}),
    "breadcrumbs": ({"weight": 0.5, "density": 0.5, "gamma": 0.1}, {}),
    "breadcrumbs_ties": ({"weight": 0.5, "density": 0.5, "gamma": 0.1}, {}),
    "della": ({"weight": 0.5, "density": 0.5, "epsilon": 0.2}, {}),
    "della_linear": ({"weight": 0.5, "density": 0.5, "epsilon": 0.2}, {}),
    "multislerp": ({"weight": 0.5}, {}),
    "karcher": ({}, {}),
    "sce": ({}, {"select_topk": 0.5}),
    "nearswap": ({}, {"t": 0.5}),
    "arcee_fusion": ({}, {}),
    "ram": ({}, {"epsilon": 0.1}),
    "ramplus_tl": ({}, {"epsilon": 0.1, "r": 0.5}),
}


def call_any(name, dtype):
    m = get_method(name)
    n = m.max_inputs or 2
    inputs = [rand(16, 12, seed=60 + i, dtype=dtype) for i in range(n)]
    base = None if m.base is BaseRole.IGNORED else rand(16, 12, seed=70, dtype=dtype)
    per_model, params = CALLS[name]
    gen = Draws(1) if m.uses_randomness else None
    snapshot = [x.clone() for x in inputs] + ([base.clone()] if base is not None else [])
    out = run(name, inputs, base=base, per_model=[per_model] * n, generator=gen, **params)
    after = inputs + ([base] if base is not None else [])
    for before, now in zip(snapshot, after, strict=True):
        assert torch.equal(before, now), f"{name} modified an input in place"
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_method_keeps_shape_dtype_and_inputs(name, dtype):
    out = call_any(name, dtype)
    assert out.shape == (16, 12)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
