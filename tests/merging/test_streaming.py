"""A merge's working set stays bounded and recycled: large tensors of elementwise methods in
parts, buffers lent again, results computed straight into the live model, packed random masks
and counted top-k cuts, all giving the same tensors as before, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergesearch.merging import Merger, buffers, engine, sinks
from mergesearch.merging.methods import selection as S
from mergesearch.merging.methods import sparsifiers as SP
from mergesearch.merging.methods.draws import Draws
from tests.helpers import reference as R
from tests.helpers.tiny_models import load_state, make_llama_family


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> list[Path]:
    return make_llama_family(tmp_path_factory.mktemp("llama"), n_models=3, seed=0)


def config(method: str, family: list[Path]) -> dict:
    p = [str(x) for x in family]
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [
                {"model": m, "parameters": {"weight": w}}
                for m, w in zip(p, [0.5, 0.3, 0.2], strict=True)
            ],
        }
    if method == "passthrough":
        return {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": p[1], "layer_range": [0, 2]}]},
                {"sources": [{"model": p[2], "layer_range": [1, 4]}]},
            ],
        }
    if method == "nearswap":
        return {
            "merge_method": "nearswap",
            "base_model": p[0],
            "models": [{"model": p[0]}, {"model": p[1]}],
            "parameters": {"t": 0.01},
        }
    if method == "ram":
        return {
            "merge_method": "ram",
            "base_model": p[0],
            "models": [{"model": m} for m in p[1:]],
            "parameters": {"epsilon": 0.001},
        }
    return {
        "merge_method": method,
        "base_model": p[0],
        "models": [{"model": m, "parameters": {"weight": 0.6, "density": 0.5}} for m in p[1:]],
    }


def merge(cfg: dict, out: Path, **merger_kwargs) -> dict[str, torch.Tensor]:
    merger = Merger(cache_bytes=0, threads=2, **merger_kwargs)
    merger.merge_to_disk(cfg, out, progress=False)
    return load_state(out)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "passthrough", "nearswap", "ram"])
def test_large_tensors_of_elementwise_methods_merge_in_parts_bit_for_bit(
    method, family, tmp_path, monkeypatch
):
    cfg = config(method, family)
    whole = merge(cfg, tmp_path / "whole")
    monkeypatch.setattr(engine, "PART_BYTES", 2048)  # every tiny tensor above 4 KiB splits
    merger = Merger(cache_bytes=0)
    plan = merger.plan(cfg)
    parts = list(merger._parts(plan))
    assert len(parts) > 2 * len(plan.jobs)
    assert sum(p.last for p in parts) == len(plan.jobs)
    assert_identical(merge(cfg, tmp_path / "parts"), whole)

    model = merger.new_model(cfg)  # parts also land in the rows of a live model
    merger.merge_into(cfg, model)
    assert_identical({k: v for k, v in model.state_dict().items() if k in whole}, whole)


def test_methods_with_whole_tensor_steps_are_not_split(family, monkeypatch):
    monkeypatch.setattr(engine, "PART_BYTES", 2048)
    merger = Merger(cache_bytes=0)
    plan = merger.plan(config("ties", family))
    assert [p.rows for p in merger._parts(plan)] == [None] * len(plan.jobs)


def test_buffers_are_lent_again_and_all_come_back(family, tmp_path, monkeypatch):
    monkeypatch.setattr(buffers, "MIN_POOLED", 0)  # pool the tiny tensors too
    merger = Merger(cache_bytes=0, threads=2)
    for i, method in enumerate(["ties", "linear", "dare_ties"]):
        merger.merge_to_disk(config(method, family), tmp_path / f"out{i}", progress=False)
        assert merger.pool._lent_bytes == 0 and merger.cache.reserved == 0
    # four layers of equal shapes, three merges: most reads and results reuse a buffer
    assert merger.pool.reuses > 3 * merger.pool.allocations


def test_what_is_in_flight_stays_under_the_stream_bound(family, tmp_path):
    probe = Merger(cache_bytes=0)
    plan = probe.plan(config("ties", family))
    largest = max(probe._job_bytes(plan, job) for job in plan.jobs)
    merger = Merger(cache_bytes=0, threads=2, stream_bytes=3 * largest)
    merger.merge_to_disk(config("ties", family), tmp_path / "out", progress=False)
    assert largest <= merger.cache.high_water <= 3 * largest
    assert merger.cache.reserved == 0 and merger.cache.bytes == 0  # nothing is cached


def test_a_job_larger_than_the_stream_bound_runs_alone(family, tmp_path):
    whole = merge(config("ties", family), tmp_path / "whole")
    assert_identical(merge(config("ties", family), tmp_path / "small", stream_bytes=1), whole)


def test_a_failed_merge_leaves_nothing_reserved_or_lent(family, tmp_path, monkeypatch):
    monkeypatch.setattr(buffers, "MIN_POOLED", 0)
    merger = Merger(cache_bytes=0, threads=2)
    bad = config("linear", family)
    bad["models"][0]["parameters"]["weight"] = 1e39  # beyond float32: inf
    with pytest.raises(engine.NonFiniteError):
        merger.merge_to_disk(bad, tmp_path / "bad", progress=False)
    assert merger.cache.reserved == 0 and merger.pool._lent_bytes == 0
    assert not (tmp_path / "bad").exists()
    merger.merge_to_disk(config("linear", family), tmp_path / "good", progress=False)
    assert merger.pool._lent_bytes == 0


def test_a_search_computes_results_straight_into_the_live_model(family, tmp_path, monkeypatch):
    in_place = []
    same = sinks._same_memory

    def spy(a: torch.Tensor, b: torch.Tensor) -> bool:
        in_place.append(same(a, b))
        return in_place[-1]

    monkeypatch.setattr(sinks, "_same_memory", spy)
    merger = Merger(cache_bytes=2**30, threads=2)
    cfg = config("ties", family)
    model = merger.new_model(cfg)
    merger.merge_into(cfg, model)
    assert in_place and all(in_place)  # no tensor was copied: each was made in its parameter
    expected = merge(cfg, tmp_path / "disk")
    assert_identical({k: v for k, v in model.state_dict().items() if k in expected}, expected)


def test_empty_like_serves_destination_then_scratch_then_pool():
    pool = buffers.BufferPool(2**20)
    like = torch.zeros(300_000)
    dest, base = torch.empty(300_000), torch.empty(300_000)
    assert buffers.empty_like(like).data_ptr() not in (dest.data_ptr(), base.data_ptr())
    with buffers.lending(pool, dest, (base,)):
        assert buffers.empty_like(like, reuse=base).data_ptr() == dest.data_ptr()
        assert buffers.empty_like(like, reuse=base).data_ptr() == base.data_ptr()
        other = torch.empty(300_000)  # not the job's own: never overwritten
        assert buffers.empty_like(like, reuse=other).data_ptr() != other.data_ptr()


@pytest.mark.parametrize("width", [512, 37])
def test_packed_random_masks_equal_the_whole_tensor_draws(width):
    gen = torch.Generator().manual_seed(3)
    rows = 3 * S.BLOCK // width + 5  # several blocks, the last one partial
    base = torch.randn(rows, width, generator=gen)
    x = base + torch.randn(rows, width, generator=gen) * 0.1
    delta = SP.Delta(x.reshape(-1), base.reshape(-1), (rows, width))
    d = x - base
    p = {"density": 0.4, "epsilon": 0.1}
    for sparsifier, expected in (
        (SP.random, R.random_mask(d, 0.4, Draws(7))),
        (SP.della, R.della_mask(d, 0.4, 0.1, Draws(7))),
    ):
        rule = sparsifier(delta, p, Draws(7))
        got = torch.cat([rule.mask(None, sl) for sl in S.blocks(d.numel(), 1000)])  # unaligned
        assert torch.equal(got, expected.reshape(-1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_counted_top_k_of_16_bit_scores_equals_the_sampled_search(dtype):
    gen = torch.Generator().manual_seed(0)
    n = 3 * S.BLOCK + 17
    b = (torch.randn(n, generator=gen) * 0.02).to(dtype)
    x = (b.float() + torch.randn(n, generator=gen) * 0.001).to(dtype)  # many equal |d|
    delta = SP.Delta(x, b, (n,))
    shared = delta.counts16()  # one counting pass that several cuts share (breadcrumbs)
    for k in (1, 7, n // 3, n // 2, n - 1):
        counted = delta.top_k(k)
        assert counted == S.select_top_k(delta.scores, n, k)
        assert delta.top_k(k, shared) == counted
        mask = torch.cat([counted.mask(delta.scores(sl), sl.start) for sl in S.blocks(n)])
        assert torch.equal(mask, R.topk_mask(delta.scores(slice(None)), k))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_counting_16_bit_patterns_finds_the_kth_value_and_its_counts(dtype):
    gen = torch.Generator().manual_seed(1)
    n = 2 * S.BLOCK + 5
    b = (torch.randn(n, generator=gen) * 0.02).to(dtype)
    x = (b.float() + torch.randn(n, generator=gen) * 0.001).to(dtype)
    delta = SP.Delta(x, b, (n,))
    scores = delta.scores(slice(None))  # float32, exact
    for k in (1, n // 4, n - 3):
        for runs in (S.COUNT_RUNS, 2):  # one block per run; several blocks per run
            counted = S.histogram_kth(S.Bits16(delta.magnitude_bits, dtype), n, k, runs=runs)
            value, above, equal = counted.value, counted.above, counted.equal
            assert value == float(torch.sort(scores, descending=True).values[k - 1])
            assert above == int((scores > value).sum()) and equal == int((scores == value).sum())
            assert above < k <= above + equal
            pattern = int(torch.tensor(value, dtype=dtype).view(torch.int16))
            assert counted.pattern == pattern
            # the tie search may start at the run that holds the ties-th equal score
            where = torch.nonzero(scores == value).squeeze(1)
            for ties in (1, equal // 2 + 1, equal):
                start, seen = counted.ties_before(ties)
                assert seen == int((where < start).sum()) and seen < ties
                assert int(where[ties - 1]) >= start
