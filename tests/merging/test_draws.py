"""The uniform stream of DARE and DELLA: its protocol, chunk invariance and exact keep rule."""

import numpy as np
import pytest
import torch

from mergesearch.merging.methods.draws import Draws, limits


def test_words_follow_the_protocol_whatever_the_chunking():
    n = 1001
    raw = np.random.SFC64(5).random_raw((n + 1) // 2)
    low_then_high = np.stack([raw & 0xFFFFFFFF, raw >> 32], axis=1).reshape(-1)[:n]
    whole = Draws(5).words(n)
    assert np.array_equal(whole, low_then_high.astype(np.uint32))
    stream = Draws(5)
    sizes = [1, 3, 2, 7, 1, 1, 500, 0, 486]  # odd sizes leave half a 64-bit word over
    assert sum(sizes) == n
    assert np.array_equal(np.concatenate([stream.words(k) for k in sizes]), whole)


def test_uniforms_are_24_bit_float32_in_the_unit_interval():
    words = Draws(2).words(100_000)
    u = Draws(2).uniform(100_000)
    assert u.dtype == torch.float32
    assert torch.equal(u.double(), torch.from_numpy((words >> 8).astype(np.float64) / 2**24))
    assert u.min().item() >= 0.0 and u.max().item() < 1.0
    assert u.mean().item() == pytest.approx(0.5, abs=0.005)


@pytest.mark.parametrize(
    "p", [0.0, 1e-9, 0.3, 0.4, 0.7, 12345 / 2**24, 0.5 + 2**-26, 1 - 2**-25, 1.0, 1.5]
)
def test_below_is_exactly_uniform_under_p(p):
    """``below`` compares integers; it must equal ``u < p`` with p exact (float64): 0.7 is
    where comparing in float32 would differ."""
    n = 200_003
    expected = Draws(9).uniform(n).double() < p
    stream = Draws(9)
    got = stream.below(p, n)
    assert torch.equal(torch.from_numpy(got), expected)
    # the stream moved by n whatever p was
    assert np.array_equal(stream.words(5), Draws(9).words(n + 5)[n:])


def test_below_keeps_the_asked_fraction_and_depends_on_the_seed():
    kept = Draws(3).below(0.3, 1_000_000)
    assert kept.mean() == pytest.approx(0.3, abs=0.002)
    assert not np.array_equal(kept, Draws(4).below(0.3, 1_000_000))


def test_word_limits_decide_as_float32_uniforms_under_float32_probabilities():
    """DELLA compares each draw's word with the limit of its rank's probability; that must be
    the torch pass's ``uniform < p`` in float32, for probabilities on the 2**-24 grid, between
    its points, and at the ends."""
    grid = np.array([0, 1, 2, 12345, 2**23, 2**24 - 1], np.float64) / 2**24
    between = grid[1:-1] + 2**-26
    odd = np.array([1e-30, 0.1, 0.3, 0.7, np.nextafter(np.float32(1), np.float32(0)), 1.0])
    probs = np.concatenate([grid, between, odd]).astype(np.float32)
    n = 300_001
    words = Draws(11).words(n)
    u = Draws(11).uniform(n)
    word_limits = limits(probs)
    for p, limit in zip(probs, word_limits, strict=True):
        expected = (u < torch.tensor(p, dtype=torch.float32)).numpy()
        assert np.array_equal(words.astype(np.uint64) < limit, expected), p
