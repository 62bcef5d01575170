"""Compiled loops (numba) over bfloat16 blocks: what every such loop needs.

The merge methods' hot loops run compiled where torch would spend a dozen elementwise ops per
block (``fused``, ``fused_ram``). They read and write bfloat16 as its 16-bit patterns
(``bits``) and round exactly as torch rounds (``narrow``: float32 to bfloat16, to
nearest-even), so a compiled loop gives the torch ops' bits. Other dtypes, and every dtype when
numba is not installed or ``MERGESEARCH_FUSED=0``, take the torch ops (``applies``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; this keeps torch as the fallback
    numba = None

CHUNK = 2048  # entries per inner loop: every model's float32 chunk stays in L1/L2 cache


def _cache_is_writable() -> bool:
    """Whether numba can keep compiled loops on disk: under ``NUMBA_CACHE_DIR``, or next to
    this module. Without such a place numba refuses to compile a cached function at all, so
    a read-only install compiles in every process instead (a few seconds)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    here = Path(__file__).parent
    pycache = here / "__pycache__"
    return os.access(pycache if pycache.is_dir() else here, os.W_OK)


def jit(**options: object):
    """numba's ``njit`` as every loop here wants it: no GIL (the merge workers run loops side by
    side), NumPy's float errors (no exception on a division by zero), cached when it can be."""
    return numba.njit(nogil=True, error_model="numpy", cache=_cache_is_writable(), **options)


def enabled() -> bool:
    return numba is not None and os.environ.get("MERGESEARCH_FUSED", "1") != "0"


def applies(*dtypes: torch.dtype) -> bool:
    """Whether the compiled loop takes tensors of these dtypes (it reads bfloat16 only)."""
    return enabled() and all(dtype == torch.bfloat16 for dtype in dtypes)


def applies_to(*tensors: torch.Tensor | None) -> bool:
    """``applies`` to the dtypes of these tensors (an absent one, ``None``, does not count)."""
    return applies(*(t.dtype for t in tensors if t is not None))


def bits_or(t: torch.Tensor | None, stand_in: torch.Tensor) -> tuple[bool, np.ndarray]:
    """``(t is given, its bits)``, or ``stand_in``'s bits where ``t`` is absent: a compiled
    loop takes an array either way and a flag that says whether to read it."""
    return t is not None, bits(t if t is not None else stand_in)


def bits(t: torch.Tensor) -> np.ndarray:
    """A contiguous bfloat16 tensor's storage as uint16 (no copy)."""
    return t.view(torch.int16).numpy().view(np.uint16)


if numba is not None:

    @intrinsic
    def _as_float(typingctx, word):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @intrinsic
    def _as_word(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(types.float32), codegen

    @intrinsic
    def fma(typingctx, x, y, z):
        """``x * y + z`` rounded once (float32), as torch's vectorized ``add(z, x, alpha=y)``."""

        def codegen(context, builder, signature, args):
            return builder.fma(*args)

        return types.float32(types.float32, types.float32, types.float32), codegen

    @numba.njit(inline="always")
    def widen(half):
        return _as_float(np.uint32(half) << np.uint32(16))

    @numba.njit(inline="always")
    def narrow(value):
        """float32 -> bfloat16 bits, to nearest-even (NaN stays NaN)."""
        if value != value:
            return np.uint16(0x7FC0)
        word = _as_word(value)
        bias = ((word >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
        return np.uint16((word + bias) >> np.uint32(16))

    @numba.njit(inline="always")
    def copysign(magnitude, sign):
        word = (_as_word(magnitude) & np.uint32(0x7FFFFFFF)) | (_as_word(sign) & np.uint32(1 << 31))
        return _as_float(word)

    @numba.njit(inline="always")
    def task_vector(x_half, base):
        """``x - b`` as torch computes it for bfloat16 tensors (rounded to bfloat16), then as
        float32: ``x_half`` a bfloat16 pattern, ``base`` already widened."""
        return widen(narrow(widen(x_half) - base))

    @numba.njit(inline="always")
    def magnitude_pattern(x_half, b_half):
        """``|x - b|`` of two bfloat16 patterns, rounded as torch rounds the bfloat16
        subtraction, as its 15-bit pattern: non-negative floats order like these integers."""
        return narrow(widen(x_half) - widen(b_half)) & np.uint16(0x7FFF)

    @numba.njit(inline="always")
    def widen_into(half, out):
        """bfloat16 patterns ``half`` as float32 into ``out`` (the first ``len(half)``)."""
        for j in range(half.shape[0]):
            out[j] = widen(half[j])
