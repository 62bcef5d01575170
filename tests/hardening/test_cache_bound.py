"""The search's tensor cache bounds what the engine holds: cached source tensors plus the inputs
and results of the jobs in flight stay under ``cache_gb``, so a search's memory is that bound
plus one live model (measured at scale by ``bench/search_memory.py``)."""

from __future__ import annotations

import pytest
import torch

from mergesearch import merging
from mergesearch.merging.engine import NonFiniteError
from mergesearch.search.spec.load import load_spec
from tests.helpers.calls import record_calls
from tests.helpers.specs import make_spec


def _config(models, weight: float, sources: tuple[str, str] = ("a", "b")) -> dict:
    refs = [{"model": str(models[k]), "parameters": {"weight": weight}} for k in sources]
    return {"models": refs, "merge_method": "linear"}


def test_cache_evicts_at_the_bound(models):
    merger = merging.Merger(cache_bytes=2**30)
    plan = merger.plan(_config(models, 0.5))
    largest = sorted((merger._job_bytes(plan, job) for job in plan.jobs), reverse=True)
    # a fraction of one tiny model (~0.6 MB of tensors) beside the most the jobs may hold
    merger.cache.max_bytes = bound = 100_000 + sum(largest[:8])
    model = merger.new_model(_config(models, 0.5))
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for weight in (0.3, 0.5, 0.7):
        merger.merge_into(_config(models, weight), model)
        assert 0 < merger.cache.in_flight_peak < bound
        assert 0 < merger.cache.bytes <= bound - merger.cache.in_flight_peak  # jobs' room kept
    kept = [value for value, _, _ in merger.cache._items.values()]
    assert sum(t.numel() * t.element_size() for t in kept) == merger.cache.bytes
    assert merger.cache.bytes < 2 * total  # two sources were read: most of it was evicted

    unbounded = merging.Merger(cache_bytes=2**30)
    unbounded.merge_into(_config(models, 0.5), model)
    assert unbounded.cache.bytes == 2 * total  # every tensor of both sources


def test_jobs_in_flight_count_against_the_bound(models):
    merger = merging.Merger(cache_bytes=2**30, threads=2)
    config = _config(models, 0.5)
    plan = merger.plan(config)
    job_bytes = [merger._job_bytes(plan, job) for job in plan.jobs]
    bound = 3 * max(job_bytes)  # room for a few jobs at once, far from all of them
    assert bound < sum(job_bytes) / 2
    merger.cache.max_bytes = bound
    model = merger.new_model(config)
    for weight in (0.3, 0.5, 0.7):
        merger.merge_into(_config(models, weight), model)
        assert merger.cache.reserved == 0  # every job handed back what it reserved
    assert max(job_bytes) < merger.cache.high_water <= bound  # jobs overlapped, within it

    with pytest.raises(NonFiniteError):  # a failed merge releases its jobs too
        merger.merge_into(_config(models, 0.5, ("a", "nan")), model)  # NaN in one layer
    assert merger.cache.reserved == 0 and merger.cache.bytes <= bound


def test_a_job_larger_than_the_bound_runs_alone(models):
    merger = merging.Merger(cache_bytes=1)
    model = merger.new_model(_config(models, 0.5))
    merger.merge_into(_config(models, 0.5), model)
    assert merger.cache.bytes == 0 and merger.cache.reserved == 0
    reference = merging.Merger(cache_bytes=0).new_model(_config(models, 0.5))
    merging.Merger(cache_bytes=0).merge_into(_config(models, 0.5), reference)
    for (name, got), want in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), name


def test_a_tensor_larger_than_the_bound_is_not_cached():
    from mergesearch.merging.engine import _TensorCache

    cache = _TensorCache(1000)
    assert not cache.put(("m", "big"), torch.zeros(1000))  # 4000 bytes
    assert cache.bytes == 0 and cache.get(("m", "big")) is None
    kept = [cache.put(("m", str(i)), torch.zeros(100)) for i in range(5)]  # 400 bytes each
    assert kept == [True, True, False, False, False]  # a full cache keeps what it holds
    assert cache.bytes == 800 and cache.get(("m", "4")) is None
    cache.reserve(400)  # a job in flight: the newest entry makes room
    assert cache.get(("m", "1")) is None and cache.get(("m", "0")) is not None
    assert cache.bytes == 400 and cache.high_water == 800
    cache.release(400)
    cache.expect_in_flight(700)  # what the next merge's jobs will hold: the newest goes
    assert cache.bytes == 0 and cache.in_flight_peak == 700
    assert cache.put(("m", "5"), torch.zeros(75)) and not cache.put(("m", "6"), torch.zeros(2))


def test_trials_over_sources_larger_than_the_cache_still_hit_it(models, monkeypatch):
    """A search reads the same tensors in the same order every trial. With sources twice the
    cache, evicting the oldest entry would drop each tensor just before the next trial reads it
    again (no hit at all); keeping the first ones serves part of every trial from memory. The
    sources not kept are read into recycled buffers, not fresh memory: the cache leaves the
    jobs' peak to the pool, so trials after the first allocate few buffers."""
    from mergesearch.merging import buffers
    from mergesearch.merging.checkpoint import Checkpoint

    reads = record_calls(monkeypatch, Checkpoint, "read_rows")
    monkeypatch.setattr(buffers, "MIN_POOLED", 0)  # pool this tiny model's tensors too
    config = _config(models, 0.5)
    sources = sum(
        t.numel() * t.element_size()
        for t in merging.Merger(cache_bytes=0).new_model(config).state_dict().values()
    )
    merger = merging.Merger(cache_bytes=sources)  # half of both sources
    model = merger.new_model(config)
    per_trial, allocations = [], []
    for weight in (0.3, 0.5, 0.7):
        reads.clear()
        merger.merge_into(_config(models, weight), model)
        per_trial.append(len(reads))
        allocations.append(merger.pool.allocations)
        assert merger.cache.bytes + merger.pool.idle_bytes <= sources
    # later trials recycle: a few buffers of sizes the pool had to drop, 3-6 against 43-47 in
    # the first trial here as jobs happen to overlap; 42-52 a trial without the jobs' room
    assert allocations[2] - allocations[1] <= allocations[0] // 4
    tensors = 2 * len(merger.plan(config).jobs)
    assert per_trial[0] == tensors
    assert per_trial[1] == per_trial[2] < tensors  # a stable share from memory
    reuses = merger.pool.reuses
    merger.merge_into(config, model)
    assert merger.pool.reuses > reuses  # buffers of the last trial's reads served this one's


def test_the_spec_sets_the_bound(models, tmp_path):
    paths = {"base": str(models["base"]), "a": str(models["a"]), "b": str(models["b"])}
    spec = load_spec(make_spec(paths, tmp_path, cache_gb=0.25))
    assert spec.cache_gb == 0.25
