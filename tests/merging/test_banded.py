"""The banded count (a one-off top-k counts only the patterns near its rank) answers exactly as
the full count does, and a rank outside its band falls back to counting everything."""

from __future__ import annotations

import pytest
import torch

from mergesearch.merging import Merger
from mergesearch.merging.methods import banded
from mergesearch.merging.methods import selection as S
from mergesearch.merging.methods import sparsifiers as SP
from tests.helpers import reference as R
from tests.helpers.calls import record_calls
from tests.helpers.tiny_models import load_state, make_llama_family

pytestmark = pytest.mark.skipif(
    not banded.applies(
        torch.zeros(S.SAMPLE_MIN_NUMEL, dtype=torch.bfloat16),
        torch.zeros(S.SAMPLE_MIN_NUMEL, dtype=torch.bfloat16),
    ),
    reason="the banded pass needs the compiled loops (numba)",
)


def _task_vector(seed: int, n: int = S.SAMPLE_MIN_NUMEL + 4099) -> SP.Delta:
    """A bfloat16 task vector with many equal magnitudes (ties at every rank)."""
    gen = torch.Generator().manual_seed(seed)
    b = (torch.randn(n, generator=gen) * 0.02).bfloat16()
    x = (b.float() + torch.randn(n, generator=gen) * 0.001).bfloat16()
    return SP.Delta(x, b, (n,))


@pytest.mark.parametrize("share", [1e-5, 0.1, 0.5, 0.9, 0.99999])
def test_the_banded_count_finds_what_the_full_count_finds(share):
    delta = _task_vector(0)
    n = delta.numel
    k = max(1, int(share * n))
    bits16 = S.Bits16(delta.magnitude_bits, torch.bfloat16)
    band = banded.band_counts16(delta.x, delta.b, k)
    assert band.patterns.numel() < 64  # a bracket, not the whole range
    assert int(band.counts.sum()) < n // 10
    got = S.histogram_kth(bits16, n, k, counts=band)
    assert got == S.histogram_kth(bits16, n, k)  # value, counts and ties per run alike
    rule = delta.top_k(k)  # a one-off cut: banded
    assert rule == S.select_top_k(delta.scores, n, k)
    mask = torch.cat([rule.mask(delta.scores(sl), sl.start) for sl in S.blocks(n)])
    assert torch.equal(mask, R.topk_mask(delta.scores(slice(None)), k))


def test_a_rank_outside_the_band_is_counted_in_full():
    delta = _task_vector(1)
    n = delta.numel
    bits16 = S.Bits16(delta.magnitude_bits, torch.bfloat16)
    band = banded.band_counts16(delta.x, delta.b, n // 2)
    for k in (n // 100, n - n // 100):  # above the band (in its gap), below it
        assert S.histogram_kth(bits16, n, k, counts=band) is None
        got = S.select_top_k(delta.scores, n, k, bits16=bits16, counts=band)
        assert got == S.select_top_k(delta.scores, n, k)


def test_the_banded_pass_rounds_the_task_vector_as_torch_does():
    """Each pattern counted is ``|x - b|`` as torch rounds the bfloat16 subtraction: the
    band's counts equal torch's count of those patterns."""
    delta = _task_vector(2)
    n = delta.numel
    band = banded.band_counts16(delta.x, delta.b, n // 3)
    patterns = delta.magnitude_bits(slice(None)).to(torch.int64)
    want = torch.stack([(patterns == p).sum() for p in band.patterns.tolist()])
    assert torch.equal(band.counts.sum(0).to(torch.int64), want)
    assert int(band.gaps[-1]) == int((patterns > band.patterns[-1]).sum())


def test_a_search_keeps_the_full_count_and_only_a_one_off_cut_is_banded(monkeypatch):
    taken = []
    monkeypatch.setattr(banded, "band_counts16", lambda *a, **k: taken.append(a) or None)
    delta = _task_vector(3)
    kept = SP.Delta(delta.x, delta.b, delta.shape, identity=("x", "b"))
    assert kept.counts16(10).gaps is None and not taken  # outside a search scope: full
    delta.counts16()  # several cuts share it (breadcrumbs): full
    assert not taken
    delta.counts16(10)
    assert len(taken) == 1
    monkeypatch.setenv("MERGESEARCH_FUSED", "0")
    assert delta.counts16(10).gaps is None and len(taken) == 1


def test_a_streamed_ties_merge_with_banded_counts_gives_the_full_counts_bits(tmp_path, monkeypatch):
    """Through the engine, with every job streamed (sources readable only as flat blocks and
    strided samples): the banded counts serve every tensor and merge the same bits."""
    family = make_llama_family(tmp_path / "family", n_models=3, seed=1)
    monkeypatch.setattr(S, "SAMPLE_MIN_NUMEL", 1024)  # the tiny tensors are counted banded
    cfg = {
        "merge_method": "ties",
        "base_model": str(family[0]),
        "models": [
            {"model": str(m), "parameters": {"weight": w, "density": d}}
            for m, w, d in zip(family[1:], (0.6, 0.4), (0.5, 0.2), strict=True)
        ],
        "dtype": "bfloat16",
    }
    banded_calls = record_calls(monkeypatch, banded, "band_counts16")
    streamed = Merger(cache_bytes=0, threads=2, stream_bytes=2)  # every job streams
    streamed.merge_to_disk(cfg, tmp_path / "banded", progress=False)
    assert len(banded_calls) >= 2 * 7  # two task vectors of every matrix of both layers
    monkeypatch.setattr(banded, "applies", lambda x, b: False)
    Merger(cache_bytes=0, threads=2).merge_to_disk(cfg, tmp_path / "full", progress=False)
    got, want = load_state(tmp_path / "banded"), load_state(tmp_path / "full")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
