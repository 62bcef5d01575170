"""The random numbers of DARE and DELLA: one seeded stream of uniforms per tensor.

Why not ``torch.rand``: on CPU it costs about 5 ns an element (20 under load), which at 7B
scale was most of a DARE merge's time. NumPy's SFC64 bit generator hands out raw 64-bit words
at well under 1 ns per 32-bit half, and a keep mask is one integer compare of each word.

The protocol, which makes a seeded merge reproducible (docs/METHODS.md, "Random draws"):
the stream is SFC64 seeded with the tensor's seed; each 64-bit word gives two 32-bit words,
low half first; the i-th uniform is ``u_i = (w_i >> 8) / 2**24``, a float32 in [0, 1) with 24
random bits, the resolution of ``torch.rand``'s float32. Draws continue across calls: drawing a
tensor in chunks of any sizes gives the same numbers as drawing it at once.
"""

from __future__ import annotations

import numpy as np
import torch

from mergesearch.merging.methods import compiled

_FRACTION_BITS = 24  # float32's significand: every u_i is exact in float32
_DROPPED_BITS = 32 - _FRACTION_BITS


class Draws:
    """The uniform stream of one tensor (see the module docstring for the exact protocol)."""

    def __init__(self, seed: int):
        self._bits = np.random.SFC64(seed)
        # NumPy's random_raw calls the generator through a pointer per word (0.9 ns a 32-bit
        # draw); the same recurrence compiled inline runs on the state it starts from
        fast = compiled.enabled()
        self._state = self._bits.state["state"]["state"].copy() if fast else None
        self._spare: np.ndarray | None = None  # the high half of a word already drawn

    def _raw(self, count: int) -> np.ndarray:
        """The next ``count`` 64-bit words of the stream."""
        if self._state is None:
            return self._bits.random_raw(count)
        out = np.empty(count, np.uint64)
        _sfc64_words(self._state, out)
        return out

    def words(self, n: int) -> np.ndarray:
        """The next ``n`` 32-bit words (uint32), continuing the stream."""
        spare, self._spare = self._spare, None
        need = n - (0 if spare is None else 1)
        raw = self._raw((need + 1) // 2).view(np.uint32)
        if need % 2:
            raw, self._spare = raw[:-1], raw[-1:].copy()
        return raw if spare is None else np.concatenate((spare, raw))

    def uniform(self, n: int) -> torch.Tensor:
        """The next ``n`` uniforms in [0, 1), float32."""
        fractions = (self.words(n) >> _DROPPED_BITS).astype(np.float32)
        return torch.from_numpy(fractions).mul_(2.0**-_FRACTION_BITS)

    def below(self, probability: float, n: int) -> np.ndarray:
        """Whether each of the next ``n`` uniforms is below ``probability`` (bool), without
        forming them (``limits``)."""
        limit = limits(np.array([probability], np.float64))[0]
        words = self.words(n)
        if limit > np.iinfo(np.uint32).max:  # every uniform is below 1 (the stream still moves)
            return np.ones(n, dtype=bool)
        return words < np.uint32(limit)


def limits(probabilities: np.ndarray) -> np.ndarray:
    """The word limit of each probability (uint64): a draw's uniform is below ``p`` exactly
    when its word is below ``ceil(p * 2**24) * 2**8``, because ``w >> 8 < p * 2**24`` holds
    for the integer ``w >> 8`` exactly when it is below the ceiling. A decision is one integer
    compare, with no uniform formed (three passes over memory in NumPy)."""
    clipped = np.clip(np.asarray(probabilities, np.float64), 0.0, 1.0)
    return np.ceil(clipped * 2**_FRACTION_BITS).astype(np.uint64) << np.uint64(_DROPPED_BITS)


if compiled.numba is not None:

    @compiled.jit()
    def _sfc64_words(state, out):
        """SFC64 (Chris Doty-Humphrey's small fast counting generator), as NumPy steps it:
        ``out`` gets the next words, ``state`` (a, b, c, counter) moves past them."""
        a, b, c, counter = state[0], state[1], state[2], state[3]
        one, shift, left, rotate = np.uint64(1), np.uint64(11), np.uint64(3), np.uint64(24)
        for i in range(out.shape[0]):
            word = a + b + counter
            counter += one
            a = b ^ (b >> shift)
            b = c + (c << left)
            c = ((c << rotate) | (c >> np.uint64(40))) + word
            out[i] = word
        state[0], state[1], state[2], state[3] = a, b, c, counter
