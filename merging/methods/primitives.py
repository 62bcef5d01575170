"""Small pure tensor functions that the merge methods compose.

Nothing here knows about configs, files or model names. Masks are ``torch.bool`` tensors of the
input's shape; no function modifies its arguments. Validation failures raise ``ConfigError`` with
a one-line message naming the parameter; the engine prefixes the tensor name.

Exact top-k: ``magnitude_mask`` and ``breadcrumbs_mask`` keep exactly ``k`` entries. Among equal
magnitudes at the cut-off the lowest flat index wins, so the choice is deterministic (mergekit's
choice follows a non-stable full sort instead; see MERGE_METHODS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergesearch.merging.errors import ConfigError
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


def _scores(d: torch.Tensor) -> torch.Tensor:
    """Flat ``|d|`` in a dtype that CPU selection kernels handle well (exact for 16-bit)."""
    return d.detach().reshape(-1).abs().to(accumulation_dtype(d.dtype))


def kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of a flat tensor (``1 <= k <= numel``), as a 0-dim tensor.

    Exact; large tensors select inside a sampled bracket instead of quick-selecting everything.
    """
    flat = scores.reshape(-1)
    value, _, _ = S.kth_largest(flat.__getitem__, flat.numel(), k)
    return torch.tensor(value, dtype=scores.dtype)


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of exactly ``k`` largest entries of ``scores``; equal values go lowest index first.

    The order is total (value descending, then flat index ascending), so masks for different
    ``k`` are nested: ``topk_mask(s, a) <= topk_mask(s, b)`` for ``a <= b``.
    """
    flat = scores.reshape(-1)
    return S.select_top_k(flat.__getitem__, flat.numel(), k).mask(flat).reshape(scores.shape)


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


def magnitude_mask(d: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``floor(density * numel)`` entries of largest ``|d|`` over the whole tensor."""
    check_density(density)
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool, device=d.device)
    return topk_mask(_scores(d), magnitude_count(d.numel(), density)).reshape(d.shape)


def random_mask(d: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """Keep each entry independently with probability ``density`` (DARE)."""
    check_density(density)
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool, device=d.device)
    device = generator.device if generator is not None else d.device
    draws = torch.rand(d.shape, generator=generator, device=device)
    return (draws < density).to(d.device)


def breadcrumbs_mask(d: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Drop the smallest and the ``gamma`` largest ``|d|``, keeping ``floor(density * n)``
    (see ``breadcrumbs_counts``).

    Deliberate difference from mergekit: there ``top == 0`` keeps nothing (its slice
    ``[bottom:-0]`` is empty); here it keeps ``[bottom, n)``, i.e. plain magnitude pruning.
    """
    bottom, top = breadcrumbs_counts(d.numel(), density, gamma)
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool, device=d.device)
    scores = _scores(d)
    mask = topk_mask(scores, d.numel() - bottom)
    if top > 0:
        mask &= ~topk_mask(scores, top)
    return mask.reshape(d.shape)


def della_mask(
    d: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None
) -> torch.Tensor:
    """DELLA's MagPrune: keep probability grows linearly with the magnitude rank in each row.

    Rows are the last dimension (a 1-D tensor is one row). Ranking ``|d|`` ascending (equal
    values by index), ``r = rank / (len - 1)`` and the keep probability is
    ``density - epsilon + 2 epsilon r``. A row of one element has ``r = 0.5`` (mergekit divides
    0 by 0 there).
    """
    if density >= 1:
        return torch.ones(d.shape, dtype=torch.bool, device=d.device)
    check_della(density, epsilon)
    width = d.shape[-1] if d.dim() >= 1 else 1
    rows = d.detach().reshape(-1, width).abs()
    device = generator.device if generator is not None else d.device
    draws = torch.rand(rows.shape, generator=generator, device=device).to(d.device)
    return della_keep(rows, draws, density, epsilon).reshape(d.shape)


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

    For float32 and 16-bit floats the bits of a non-negative float32 order like its value, so
    ``bits << b | column`` are distinct int64 keys whose plain sort is that stable order; NumPy
    sorts int64 with SIMD, about 4x faster than ``torch.sort(stable=True)`` on float rows (a
    sort per row is most of DELLA's time).
    """
    rows, width = values.shape
    if values.dtype == torch.float64 or rows * width == 0:
        return torch.sort(values, dim=1, stable=True).indices
    shift = max(1, (width - 1).bit_length())
    keys = values.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    keys.bitwise_left_shift_(shift).bitwise_or_(torch.arange(width))
    keys.numpy().sort(axis=1)  # in place; NumPy releases the GIL while it sorts
    return keys.bitwise_and_((1 << shift) - 1)


def dot(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Dot products along ``dim``, summed accurately.

    ``torch.dot``, ``vecdot`` and ``vector_norm`` accumulate float32 naively on CPU: on a
    45M-element tensor they are off by 1e-3 (dot) to 3e-2 (L1 norm) relative. ``sum`` uses
    cascade summation and stays near 1e-8, at the price of one temporary.
    """
    return (a * b).sum(dim=dim, dtype=accumulation_dtype(a.dtype))


def l1_norm(x: torch.Tensor) -> float:
    return float(x.abs().sum(dtype=accumulation_dtype(x.dtype)))


def l1_rescale(kept: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Scale ``kept`` so its L1 norm matches ``original``'s (unchanged if either is < 1e-7)."""
    before = l1_norm(original)
    after = l1_norm(kept)
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept * (before / after)


def apply_mask(d: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """``d`` with dropped entries zeroed, L1-rescaled to ``d``'s norm when ``rescale``."""
    kept = d * mask
    return l1_rescale(kept, d) if rescale else kept


def sign_consensus(weighted_deltas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """TIES sign election: one mask per delta, true where its sign agrees with the sum's.

    The elected sign is ``+1`` where the sum of the weighted deltas is ``>= 0``, else ``-1``.
    Zeros never agree, so pruned entries neither vote nor count in the divisor.
    """
    first, rest = weighted_deltas[0], weighted_deltas[1:]
    total = first.to(accumulation_dtype(first.dtype), copy=True)
    for delta in rest:
        total += delta
    positive = total >= 0
    del total
    return [torch.where(positive, delta, -delta) > 0 for delta in weighted_deltas]


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum w_i x_i``, accumulated in float32 for 16-bit inputs (result in that wider dtype)."""
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    acc = tensors[0].to(accumulation_dtype(tensors[0].dtype)) * float(weights[0])
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        acc.add_(x, alpha=float32_scalar(w))
    return acc


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
    aa = bb = ab = 0.0
    for sl in S.blocks(a.numel()):
        x, y = a[sl].to(torch.float32), b[sl].to(torch.float32)
        aa += float(dot(x, x))
        bb += float(dot(y, y))
        ab += float(dot(x, y))
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
    out = torch.empty_like(a)
    for sl in S.blocks(a.numel()):
        out[sl] = torch.add(a[sl].to(torch.float32) * c0, b[sl].to(torch.float32), alpha=c1)
    return out.reshape(v0.shape)


def nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool, row_wise: bool
) -> torch.Tensor:
    """Slerp of whole tensors (``flatten``) or of their vectors along dim -1 (dim 0 if
    ``row_wise``). Norms clamp at 1e-7; vectors with ``|sin theta| < 1e-8`` use lerp.

    Runs in float32 and returns ``v0``'s dtype.
    """
    a = v0.detach().to(torch.float32)
    b = v1.detach().to(torch.float32)
    if flatten or a.dim() == 0:
        a, b = a.reshape(-1), b.reshape(-1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)
    norms = dot(a, a).sqrt().clamp(min=1e-7) * dot(b, b).sqrt().clamp(min=1e-7)
    cos = (dot(a, b) / norms).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin_theta = torch.sin(theta)
    colinear = sin_theta.abs() < 1e-8
    safe_sin = torch.where(colinear, torch.ones_like(sin_theta), sin_theta)
    c0 = torch.where(colinear, 1.0 - t, torch.sin((1.0 - t) * theta) / safe_sin)
    c1 = torch.where(colinear, t, torch.sin(t * theta) / safe_sin)
    res = c0.unsqueeze(-1) * a + c1.unsqueeze(-1) * b
    if row_wise and not flatten and v0.dim() > 0:
        res = res.transpose(0, -1)
    return res.reshape(v0.shape).to(v0.dtype)
