"""Small pure tensor functions that the merge methods compose.

Nothing here knows about configs, files or model names. Masks are ``torch.bool`` tensors of the
input's shape; no function modifies its arguments. Validation failures raise ``ConfigError`` with
a one-line message naming the parameter; the engine prefixes the tensor name.

The sparsifiers (``sparsifiers``) build on the counts and checks here; their whole-tensor
statement, which the tests hold the blockwise code to, is ``tests/helpers/reference.py``.
Exact top-k: a magnitude cut keeps exactly ``k`` entries, and among equal magnitudes at the
cut-off the lowest flat index wins, so the choice is deterministic (mergekit's follows a
non-stable full sort instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from mergesearch.merging import buffers
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import compiled, fused_angles
from mergesearch.merging.methods import selection as S

# Sizes above which the threshold search samples first (see ``selection.kth_largest``).
_SAMPLE_MIN_NUMEL = S.SAMPLE_MIN_NUMEL
_SAMPLE_SIZE = S.SAMPLE_SIZE

SLERP_DOT_THRESHOLD = 0.9995
SLERP_NORM_EPS = 1e-8
RESCALE_EPS = 1e-7
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over models run in: float32 for 16-bit floats, else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def base_and_other(
    method: str, inputs: Sequence[torch.Tensor], base: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat views of the base and the one other input of a method that merges exactly two
    models (``method`` names it in the error)."""
    if base is None or len(inputs) != 1:
        raise ConfigError(f"{method} merges exactly two models: base_model and one other")
    return base.detach().reshape(-1), inputs[0].detach().reshape(-1)


def check_density(density: float) -> None:
    if density < 0:
        raise ConfigError(f"density must be >= 0 (1 keeps everything), got {density}")


def magnitude_count(n: int, density: float) -> int:
    """``floor(density * n)``, the entries TIES keeps; keeping none is a config error."""
    check_density(density)
    k = math.floor(density * n)
    if k == 0:
        raise ConfigError(
            f"density {density} keeps no entry of a {n}-element tensor "
            f"(floor(density * numel) = 0); use a density in [{1 / n:.3g}, 1]"
        )
    return k


def breadcrumbs_counts(n: int, density: float, gamma: float) -> tuple[int, int]:
    """``(bottom, top)``: how many of the smallest and of the largest ``|d|`` breadcrumbs drops.

    With ``keep = floor(density n)``, ``top = floor(gamma n)``, ``bottom = n - keep - top``
    (a negative ``bottom`` is taken from ``top``), the kept ascending ranks are
    ``[bottom, n - top)``.
    """
    check_density(density)
    if gamma < 0:
        raise ConfigError(f"gamma must be >= 0, got {gamma}")
    keep = math.floor(density * n)
    top = math.floor(gamma * n)
    bottom = n - keep - top
    if bottom < 0:
        top += bottom
        bottom = 0
    return bottom, top


def check_della(density: float, epsilon: float) -> None:
    if not (density - epsilon > 0 and density + epsilon < 1):
        raise ConfigError(
            f"della needs density - epsilon > 0 and density + epsilon < 1; "
            f"got density={density}, epsilon={epsilon}"
        )


def della_probabilities(width: int, density: float, epsilon: float) -> torch.Tensor:
    """Keep probability by ascending rank within a row of ``width`` (float32, as DELLA draws)."""
    if width == 1:
        return torch.full((1,), density, dtype=torch.float32)
    step = 2.0 * epsilon / (width - 1)
    return torch.arange(width, dtype=torch.float32).mul_(step).add_(density - epsilon)


def della_keep(
    magnitudes: torch.Tensor, draws: torch.Tensor, density: float, epsilon: float
) -> torch.Tensor:
    """Keep mask of 2-D ``magnitudes``: ``draws < p(rank in row)``; validation is the caller's."""
    order = stable_row_order(magnitudes)
    probs = della_probabilities(magnitudes.shape[1], density, epsilon)
    keep_sorted = torch.gather(draws, 1, order) < probs
    return torch.empty(order.shape, dtype=torch.bool).scatter_(1, order, keep_sorted)


def stable_row_order(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort each row of a 2-D tensor of non-negative floats ascending, equal values
    by index (a stable argsort along dim 1).

    The bits of a non-negative float order like its value, so integer sorts give the order
    (a sort per row is most of DELLA's time; ``bench/RESULTS_scale.md``). A 16-bit float's
    bits are an ``int16``, which NumPy's stable argsort orders by radix sort: about 4 ns an
    element whatever the row's width, against 10-15 for a comparison sort of packed keys. A
    float32 row sorts ``bits << b | column`` (distinct int64 keys, so a plain SIMD sort is
    stable), still several times faster than ``torch.sort(stable=True)``.
    """
    rows, width = values.shape
    if values.dtype == torch.float64 or rows * width == 0:
        return torch.sort(values, dim=1, stable=True).indices
    if values.dtype in (torch.bfloat16, torch.float16):
        bits = values.contiguous().view(torch.int16).numpy()
        return torch.from_numpy(np.argsort(bits, axis=1, kind="stable"))  # radix, GIL released
    shift = max(1, (width - 1).bit_length())
    keys = values.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    keys.bitwise_left_shift_(shift).bitwise_or_(torch.arange(width))
    keys.numpy().sort(axis=1)  # in place; NumPy releases the GIL while it sorts
    return keys.bitwise_and_((1 << shift) - 1)


def dot(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Dot products along ``dim``, summed accurately.

    ``torch.dot``, ``vecdot`` and ``vector_norm`` accumulate float32 naively on CPU, so their
    relative error grows with the tensor's size and reaches visible digits on embedding-sized
    tensors (``bench/RESULTS_merge.md``). ``sum`` uses cascade summation and stays accurate, at
    the price of one temporary.
    """
    return (a * b).sum(dim=dim, dtype=accumulation_dtype(a.dtype))


def population_variance(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Elementwise variance over ``values`` (divided by their count), in their dtype.

    Welford's update in float64, which is what ``torch.var(torch.stack(values), dim=0,
    unbiased=False)`` computes on CPU, bit for bit, without its scalar per-element loop.
    """
    mean = values[0].to(torch.float64, copy=True)  # after the first value: m2 = 0
    m2: torch.Tensor | None = None
    for count, value in enumerate(values[1:], start=2):
        x = value.to(torch.float64, copy=True)
        delta = x - mean
        mean.add_(delta / count)
        step = delta.mul_(x.sub_(mean))
        m2 = step if m2 is None else m2.add_(step)
    if m2 is None:
        return torch.zeros_like(values[0])
    return m2.div_(len(values)).to(values[0].dtype)


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum w_i x_i``, accumulated in float32 for 16-bit inputs (result in that wider dtype)."""
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    acc = tensors[0].to(accumulation_dtype(tensors[0].dtype)) * float(weights[0])
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        acc.add_(x, alpha=float32_scalar(w))
    return acc


def elected_sign(terms: Sequence[torch.Tensor], ones: torch.Tensor) -> torch.Tensor:
    """The sign of ``sum(terms)`` as a float +-1 per element (a new tensor; ``terms`` are not
    changed): +1 where the sum is >= 0. ``copysign`` makes a 0 vote +1; only a sum of -0.0
    votes -1, and that means every term is zero (zeros agree with no sign, so the vote is
    moot). ``ones``: a block of 1.0 at least as long as the terms (no fill per block)."""
    ones = ones[: terms[0].numel()]
    if len(terms) == 1:
        return torch.copysign(ones, terms[0])
    total = terms[0] + terms[1]
    for t in terms[2:]:
        total.add_(t)
    return torch.copysign(ones, total, out=total)


def keep_only(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values`` (changed in place) times the bool mask ``keep``, read as 0/1 bytes: the same
    products, a quarter of a multiply by bools on CPU (0.16 against 0.7 ns an element)."""
    return values.mul_(keep.view(torch.uint8))


def float32_scalar(value: float) -> float:
    """``value`` as an ``alpha=`` for float32 ops: beyond float32's range it is +-inf, which
    makes the result inf (refused later as unusable) instead of torch raising on the cast."""
    return (
        value if abs(value) <= FLOAT32_MAX or math.isnan(value) else math.copysign(math.inf, value)
    )


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two whole tensors as single vectors; ``t=0`` gives ``v0``.

    Runs in float32 and returns ``v0``'s dtype. The unit vectors only serve the angle: the
    result combines the original tensors. Nearly (anti)parallel tensors fall back to lerp.
    Both passes (dot products, then the combination) go block by block, so no float32 copy or
    product of the whole tensor is made.
    """
    a = v0.detach().reshape(-1)
    b = v1.detach().reshape(-1)
    aa, bb, ab = _self_and_cross(gram([a, b]))
    norm_a, norm_b = math.sqrt(aa), math.sqrt(bb)
    cos = ab / (
        (norm_a if norm_a > SLERP_NORM_EPS else 1.0) * (norm_b if norm_b > SLERP_NORM_EPS else 1.0)
    )
    if abs(cos) > SLERP_DOT_THRESHOLD:
        c0, c1 = 1.0 - t, t
    else:
        theta = math.acos(cos)
        sin_theta = math.sin(theta)
        c0 = math.sin((1.0 - t) * theta) / sin_theta
        c1 = math.sin(t * theta) / sin_theta
    out = buffers.empty_like(a)
    fast = compiled.applies_to(a, b)
    for sl in S.blocks(a.numel()):
        if fast:
            fused_angles.slerp_mix(a[sl], b[sl], c0, c1, out[sl])
        else:
            out[sl] = torch.add(a[sl].to(torch.float32) * c0, b[sl].to(torch.float32), alpha=c1)
    return out.reshape(v0.shape)


def _self_and_cross(g: torch.Tensor) -> tuple[float, float, float]:
    """``(a.a, b.b, a.b)`` from the Gram matrix of ``a`` and ``b``."""
    return float(g[0, 0]), float(g[1, 1]), float(g[0, 1])


def nuslerp(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    flatten: bool,
    row_wise: bool,
    origin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Slerp of whole tensors (``flatten``) or of their vectors along dim -1 (dim 0 if
    ``row_wise``). Norms clamp at 1e-7; vectors with ``|sin theta| < 1e-8`` use lerp. With
    ``origin``, of the offsets ``v - origin`` (formed in the inputs' dtype), added back to it.

    Runs in float32 and returns ``v0``'s dtype. Block by block (the dot products first when a
    vector spans blocks, then the combination), so no float32 copy of a whole tensor is made.
    """
    out = buffers.empty_like(v0)
    if flatten or v0.dim() <= 1:  # one vector: the whole tensor
        a, b, dst = v0.detach().reshape(-1), v1.detach().reshape(-1), out.reshape(-1)
        o = origin.detach().reshape(-1) if origin is not None else None
        dots = _self_and_cross(gram([a, b], o, round_offsets=True))
        k0, k1 = _slerp_coefficients(t, *torch.tensor(dots, dtype=torch.float32))
        fast = compiled.applies_to(a, b, o)
        for sl in S.blocks(a.numel()):
            osl = o[sl] if o is not None else None
            if fast:
                fused_angles.nuslerp_mix(a[sl], b[sl], osl, float(k0), float(k1), dst[sl])
            else:
                x, y = _offsets(a[sl], b[sl], osl)
                dst[sl] = _mix(k0, k1, x, y, osl, v0.dtype)
        return out
    rows = v0.shape[0] if row_wise else v0.numel() // v0.shape[-1]
    width = v0.numel() // max(1, rows)
    a, b, dst = (v.detach().reshape(rows, width) for v in (v0, v1, out))
    o = origin.detach().reshape(rows, width) if origin is not None else None
    step = max(1, S.BLOCK // max(1, width))  # whole rows per block
    spans = [slice(start, start + step) for start in range(0, rows, step)]
    if row_wise:  # vectors are columns: their dot products add up over the blocks of rows
        sums = torch.zeros(3, width, dtype=torch.float64)
        for sl in spans:
            x, y = _offsets(a[sl], b[sl], o[sl] if o is not None else None)
            sums += torch.stack([dot(x, x, 0), dot(y, y, 0), dot(x, y, 0)])
        k0, k1 = _slerp_coefficients(t, *sums.to(torch.float32))
    for sl in spans:
        x, y = _offsets(a[sl], b[sl], o[sl] if o is not None else None)
        if not row_wise:  # vectors are rows: each lies within the block
            k0, k1 = (
                c.unsqueeze(-1) for c in _slerp_coefficients(t, dot(x, x), dot(y, y), dot(x, y))
            )
        dst[sl] = _mix(k0, k1, x, y, o[sl] if o is not None else None, v0.dtype)
    return out


def _offsets(
    x: torch.Tensor, y: torch.Tensor, o: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x - o`` and ``y - o`` in the inputs' dtype (or ``x``, ``y``), then in float32."""
    if o is not None:
        x, y = x - o, y - o
    return x.to(torch.float32), y.to(torch.float32)


def _mix(
    k0: torch.Tensor,
    k1: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    o: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``k0 x + k1 y`` in ``dtype``, plus ``o`` (in ``dtype``) when given."""
    mixed = (k0 * x + k1 * y).to(dtype)
    return mixed if o is None else o + mixed


def _slerp_coefficients(
    t: float, aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """nuslerp's ``(c0, c1)`` per vector from its dot products (float32)."""
    norms = aa.sqrt().clamp(min=1e-7) * bb.sqrt().clamp(min=1e-7)
    cos = (ab / norms).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin_theta = torch.sin(theta)
    colinear = sin_theta.abs() < 1e-8
    safe_sin = torch.where(colinear, torch.ones_like(sin_theta), sin_theta)
    c0 = torch.where(colinear, 1.0 - t, torch.sin((1.0 - t) * theta) / safe_sin)
    c1 = torch.where(colinear, t, torch.sin(t * theta) / safe_sin)
    return c0, c1


# --- vectors in the span of the inputs (multislerp, karcher) -----------------------------------
#
# Methods that work on the sphere (normalise, average unit vectors, walk along geodesics) only
# ever form linear combinations of their input vectors. Such a method can run on the inputs'
# Gram matrix ``G_ij = v_i . v_j`` (one pass over the data) and describe every intermediate
# vector by its coefficients ``c`` over the inputs (``|sum c_i v_i|^2 = c^T G c``); a second
# pass forms the result. No copy, stack or unit vector of the tensor's size is ever made.


def gram(
    vectors: Sequence[torch.Tensor],
    origin: torch.Tensor | None = None,
    *,
    round_offsets: bool = False,
) -> torch.Tensor:
    """``G_ij = (v_i - o) . (v_j - o)`` of flat tensors (``o = 0`` without ``origin``), float64.

    The offsets are formed in float32 for 16-bit inputs, or with ``round_offsets`` in the
    inputs' dtype (as nuslerp's and model_stock's ``x - b``). Block by block; 16-bit inputs
    multiply and sum in float64, where a product of two of them is exact (in float32 one would
    overflow past 1.8e19 or vanish below 1e-23), so either path (compiled or torch) sums exact
    terms, in different orders: they agree to about 1e-15 relative. Wider inputs keep their own
    products (``dot``), added up in float64.
    """
    flats = [v.detach().reshape(-1) for v in vectors]
    o = origin.detach().reshape(-1) if origin is not None else None
    n = len(flats)
    sums = np.zeros((n, n), dtype=np.float64)
    acc = accumulation_dtype(flats[0].dtype)
    wide = torch.float64 if acc != flats[0].dtype else acc
    fast = compiled.applies_to(*flats, o)
    for sl in S.blocks(flats[0].numel()):
        osl = o[sl] if o is not None else None
        if fast:
            fused_angles.gram([f[sl] for f in flats], osl, round_offsets, sums)
            continue
        if round_offsets and osl is not None:
            parts = [torch.sub(f[sl], osl).to(wide) for f in flats]
        else:
            parts = [_offset(f[sl], osl, acc).to(wide) for f in flats]
        for i in range(n):
            for j in range(i, n):
                sums[i, j] += float(dot(parts[i], parts[j]))
    g = torch.from_numpy(sums)
    return torch.triu(g) + torch.triu(g, 1).T


def _offset(v: torch.Tensor, o: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor:
    """``v - o`` (or ``v``) in ``acc``; may be ``v`` itself, so callers must not write to it."""
    return v.to(acc) if o is None else torch.sub(v.to(acc), o.to(acc))


def span_norm(coefficients: torch.Tensor, g: torch.Tensor) -> float:
    """``|sum c_i v_i|`` from the Gram matrix of the ``v_i`` (rounding below 0 reads as 0)."""
    return math.sqrt(max(0.0, float(coefficients @ g @ coefficients)))


def combine(
    vectors: Sequence[torch.Tensor],
    coefficients: Sequence[float],
    origin: torch.Tensor | None = None,
) -> torch.Tensor:
    """``o + sum c_i (v_i - o)``, or ``sum c_i v_i`` without ``origin``, block by block.

    Accumulates in float32 for 16-bit inputs and returns the inputs' dtype and shape.
    """
    first = vectors[0]
    flats = [v.detach().reshape(-1) for v in vectors]
    o = origin.detach().reshape(-1) if origin is not None else None
    acc = accumulation_dtype(first.dtype)
    out = buffers.empty_like(flats[0])
    fast = compiled.applies_to(*flats, o)
    weights = [float32_scalar(c) for c in coefficients]
    for sl in S.blocks(first.numel()):
        if fast:
            fused_angles.combine(
                [f[sl] for f in flats], o[sl] if o is not None else None, weights, out[sl]
            )
            continue
        total = None
        for f, c in zip(flats, weights, strict=True):
            term = _offset(f[sl], o[sl] if o is not None else None, acc)
            if total is None:
                total = term.mul(c)  # a new tensor: never an input's storage
            else:
                total.add_(term, alpha=c)
        assert total is not None
        if o is not None:
            total.add_(o[sl])
        out[sl] = total
    return out.reshape(first.shape)
