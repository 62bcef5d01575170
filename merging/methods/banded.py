"""A one-off top-k's counting pass, limited to the patterns near the answer (bfloat16).

``selection.count16`` counts every 16-bit pattern of ``|x - b|``: a torch subtraction and a
``bincount`` into 32768 counters, about 1.1-1.3 ns an entry on one core at Mistral-7B width,
half of a ties merge's arithmetic. A search keeps those counts between trials, so it needs all
of them. A one-off cut asks for one rank only. Here a strided sample brackets that rank's
pattern (as ``selection.kth_largest_of_each`` brackets a float), and one compiled pass forms
``|x - b|`` itself, counts the entries above the bracket with a compare that vectorizes, and
counts patterns only inside the bracket (about 2% of the entries with a sample of 2**18):
0.7-0.9 ns an entry, the sample included. The result is a ``Counts16`` of the
bracket's patterns whose ``gaps`` say how many entries lie above it uncounted;
``selection.histogram_kth`` reads it as it reads a full count and answers None when the rank
falls outside the bracket (a sample that misleads), and the caller then counts everything.
"""

from __future__ import annotations

import numpy as np
import torch

from mergesearch.merging.methods import compiled, selection
from mergesearch.merging.methods.compiled import CHUNK, bits, jit, numba
from mergesearch.merging.methods.selection import (
    COUNT_RUNS,
    Counts16,
    blocks,
    rank_bracket,
    run_layout,
)

# Sample size for the bracket: 2**16 left about 7.5% of the entries inside it at the median
# (a pattern there holds about 0.5% of them), 2**18 about 2%, which the pass takes without
# paying for mispredicted branches; 2**20 costs more to draw than it saves.
SAMPLE_SIZE = 1 << 18

if numba is not None:
    from mergesearch.merging.methods.compiled import magnitude_pattern

    @jit()
    def _band_counts(base, x, low, high, counts):
        """Add to ``counts[p - low]`` the entries whose pattern ``p`` of ``|x - b|`` (rounded
        to bfloat16 as torch rounds it) lies in ``[low, high]``; return how many lie above."""
        n = base.shape[0]
        keys = np.empty(CHUNK, np.uint16)
        top, first, width = np.uint16(high), np.uint16(low), np.uint16(high - low)
        above = 0
        for c0 in range(0, n, CHUNK):
            m = min(CHUNK, n - c0)
            xc, bc = x[c0 : c0 + m], base[c0 : c0 + m]
            for j in range(m):  # vectorizes: the chunk's patterns first
                keys[j] = magnitude_pattern(xc[j], bc[j])
            higher = 0
            for j in range(m):  # vectorizes: a compare and a sum
                higher += np.int64(keys[j] > top)
            above += higher
            for j in range(m):  # one unsigned compare, rarely true
                offset = np.uint16(keys[j] - first)
                if offset <= width:
                    counts[offset] += 1
        return above


def applies(x: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the banded pass can serve: bfloat16 task vectors large enough to sample, with
    the compiled loops available."""
    return compiled.applies_to(x, b) and b.numel() >= selection.SAMPLE_MIN_NUMEL


def band_counts16(x: torch.Tensor, b: torch.Tensor, k: int, runs: int = COUNT_RUNS) -> Counts16:
    """Counts of the patterns of ``|x - b|`` (flat bfloat16 tensors) in a bracket around the
    ``k``-th largest, per run of blocks as ``count16`` keeps them; ``gaps`` holds the count
    above the bracket."""
    n = b.numel()
    step = max(1, n // SAMPLE_SIZE)
    sample = torch.sub(x[::step], b[::step]).abs_().view(torch.int16).to(torch.float32)
    low, high = (int(v) for v in rank_bracket(sample, n, k))
    per_run, starts = run_layout(n, runs)
    counts = np.zeros((len(starts), high - low + 1), np.int64)
    above = 0
    for sl in blocks(n):
        above += _band_counts(bits(b[sl]), bits(x[sl]), low, high, counts[sl.start // per_run])
    gaps = torch.zeros(high - low + 1, dtype=torch.int64)
    gaps[-1] = above
    patterns = torch.arange(low, high + 1, dtype=torch.int64)
    return Counts16(patterns, torch.from_numpy(counts).to(torch.int32), starts, gaps)
