"""The methods whose coefficients come from angles between whole tensors (slerp, nuslerp,
model_stock, multislerp, karcher) in bfloat16 as compiled loops (see ``compiled``).

Each reads every block twice: once for the dot products that fix the angles (``gram``), once
for the combination. In torch the first pass costs a float32 copy of every input and a product
and a sum per pair a block, the second as many copies and a few ops more. Measured on one core
at Mistral-7B width (14336 x 4096, a fresh output each call), torch -> compiled, ns an element:
slerp 3.1 -> 1.7 (its dot pass 0.55, its combination 0.29), a three-vector Gram over a base
4.0 -> 1.3, a three-vector combination over a base 2.7 -> 1.4. The combinations give the torch
ops' bits for the same coefficients. The dot products are float64 sums of float64 products in
both paths (exact for bfloat16 inputs, which float32 products are not: they overflow past
1.8e19), added in different orders, so they agree to about 1e-15 relative: the float32
coefficients made from them can only differ where one lands that close to a rounding boundary.
"""

from __future__ import annotations

import numpy as np
import torch

from mergesearch.merging.methods.compiled import CHUNK, bits, bits_or, jit, numba

if numba is not None:
    from mergesearch.merging.methods.compiled import fma, narrow, task_vector, widen

if numba is not None:

    @jit(fastmath={"reassoc"})
    def _gram(vectors, origin, offsets, rounded, sums):
        """Add every ``x_i . x_j`` of one block to ``sums[i, j]`` (``i <= j``): ``x_i`` the
        blocks of ``vectors``, or with ``offsets`` their differences from ``origin``, formed in
        float32 or, ``rounded``, in bfloat16 (as torch forms ``x - o`` of bfloat16 tensors)."""
        k, n = len(vectors), origin.shape[0]
        wide = np.empty((k, CHUNK), np.float32)
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            o = origin[c0 : c0 + m]
            for i in range(k):
                x, row = vectors[i][c0 : c0 + m], wide[i]
                if not offsets:
                    for j in range(m):
                        row[j] = widen(x[j])
                elif rounded:
                    for j in range(m):
                        row[j] = task_vector(x[j], widen(o[j]))
                else:
                    for j in range(m):
                        row[j] = widen(x[j]) - widen(o[j])
            for i in range(k):
                for other in range(i, k):
                    total, left, right = 0.0, wide[i], wide[other]
                    for j in range(m):
                        total += np.float64(left[j]) * np.float64(right[j])
                    sums[i, other] += total

    @jit()
    def _combine(vectors, origin, offsets, weights, out):
        """``o + sum c_i (v_i - o)`` (or ``sum c_i v_i``) as ``primitives.combine``'s torch ops
        round it: offsets in float32, the first term a rounded product, every later one fused
        into the running sum (``add_(term, alpha=c)``), ``o`` added last."""
        k = len(vectors)
        zero = np.float32(0.0)
        for j in range(out.shape[0]):
            base = widen(origin[j]) if offsets else zero
            total = (widen(vectors[0][j]) - base) * weights[0]
            for i in range(1, k):
                total = fma(widen(vectors[i][j]) - base, weights[i], total)
            out[j] = narrow(total + base if offsets else total)

    @jit()
    def _slerp_mix(a, b, c0, c1, out):
        """``a c0 + b c1`` as ``torch.add(a * c0, b, alpha=c1)`` rounds it: the first product
        rounded, the second fused into the sum."""
        for j in range(a.shape[0]):
            out[j] = narrow(fma(widen(b[j]), c1, widen(a[j]) * c0))

    @jit()
    def _nuslerp_mix(a, b, o, offsets, k0, k1, out):
        """``k0 x + k1 y`` (each product rounded) to bfloat16, plus ``o`` with ``offsets``."""
        for j in range(a.shape[0]):
            if offsets:
                base = widen(o[j])
                x, y = task_vector(a[j], base), task_vector(b[j], base)
                out[j] = narrow(base + widen(narrow(k0 * x + k1 * y)))
            else:
                out[j] = narrow(k0 * widen(a[j]) + k1 * widen(b[j]))

    @jit()
    def _stock_mix(models, base, ratio, out):
        """``ratio * average + (1 - ratio) * base`` as model_stock's torch ops round it: the
        average summed and divided in bfloat16 (``0 + x_0 + x_1 ...``), the rest in float32."""
        k = len(models)
        count, rest = np.float32(k), np.float32(1.0) - ratio
        for j in range(base.shape[0]):
            total = narrow(np.float32(0.0) + widen(models[0][j]))
            for i in range(1, k):
                total = narrow(widen(total) + widen(models[i][j]))
            average = widen(narrow(widen(total) / count))
            out[j] = narrow(ratio * average + rest * widen(base[j]))


def combine(
    vectors: list[torch.Tensor],
    origin: torch.Tensor | None,
    coefficients: list[float],
    out: torch.Tensor,
) -> None:
    """``out`` (a block of the result) = ``o + sum c_i (v_i - o)`` (see ``_combine``)."""
    offsets, first = bits_or(origin, vectors[0])
    weights = np.array(coefficients, np.float32)
    _combine(tuple(bits(v) for v in vectors), first, offsets, weights, bits(out))


def gram(
    vectors: list[torch.Tensor], origin: torch.Tensor | None, rounded: bool, sums: np.ndarray
) -> None:
    """Add one block's dot products to the upper triangle of ``sums`` (float64, k x k)."""
    offsets, first = bits_or(origin, vectors[0])
    _gram(tuple(bits(v) for v in vectors), first, offsets, rounded, sums)


def slerp_mix(a: torch.Tensor, b: torch.Tensor, c0: float, c1: float, out: torch.Tensor) -> None:
    """``out`` (a block of the result) = ``a c0 + b c1``."""
    _slerp_mix(bits(a), bits(b), np.float32(c0), np.float32(c1), bits(out))


def nuslerp_mix(
    a: torch.Tensor,
    b: torch.Tensor,
    o: torch.Tensor | None,
    k0: float,
    k1: float,
    out: torch.Tensor,
) -> None:
    """``out`` (a block of the result) = ``k0 x + k1 y`` (plus ``o``: see ``_nuslerp_mix``)."""
    offsets, origin = bits_or(o, a)
    _nuslerp_mix(bits(a), bits(b), origin, offsets, np.float32(k0), np.float32(k1), bits(out))


def stock_mix(
    models: list[torch.Tensor], base: torch.Tensor, ratio: float, out: torch.Tensor
) -> None:
    """``out`` (a block of the result) = model_stock's interpolation at ``ratio`` (float32)."""
    _stock_mix(tuple(bits(x) for x in models), bits(base), np.float32(ratio), bits(out))
