"""A search keeps the counts of a top-k between trials (``merging.derived``): later trials skip
the counting pass and give the bits a fresh merge gives; one-off merges keep nothing."""

from __future__ import annotations

import pytest
import torch

from mergesearch.merging import Merger
from mergesearch.merging.buffers import TensorCache
from mergesearch.merging.methods import sparsifiers as SP
from tests.helpers.calls import record_calls
from tests.helpers.tiny_models import make_llama_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_llama_family(tmp_path_factory.mktemp("derived"), n_models=3, seed=2)


def _config(family, method: str, density: float, weight: float = 0.6) -> dict:
    params = {"weight": weight, "density": density}
    if method == "breadcrumbs_ties":
        params["gamma"] = 0.05
    return {
        "models": [{"model": str(p), "parameters": params} for p in family[1:]],
        "merge_method": method,
        "base_model": str(family[0]),
        "dtype": "bfloat16",
    }


@pytest.fixture
def counting_passes(monkeypatch) -> list[tuple]:
    """The counting passes that ran (one per model and tensor when nothing is kept)."""
    return record_calls(monkeypatch, SP, "count16")


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_later_trials_skip_the_counting_pass_and_merge_the_same_bits(
    family, method, counting_passes
):
    search = Merger(cache_bytes=2**30)
    model = search.new_model(_config(family, method, 0.5))
    tensors = len([job for job in search.plan(_config(family, method, 0.5)).jobs if job.shape])
    trials = []
    for density in (0.5, 0.3, 0.7):
        counting_passes.clear()
        search.merge_into(_config(family, method, density), model)
        trials.append(len(counting_passes))
        fresh = Merger(cache_bytes=0)  # nothing kept: every count taken again
        reference = fresh.new_model(_config(family, method, density))
        fresh.merge_into(_config(family, method, density), reference)
        for (name, got), want in zip(
            model.state_dict().items(), reference.state_dict().values(), strict=True
        ):
            assert torch.equal(got, want), (density, name)
    assert trials[0] >= 2 * tensors - 2  # two task vectors per tensor (norms may skip)
    assert trials[1] == trials[2] == 0


def test_a_one_off_merge_keeps_nothing(family, counting_passes):
    merger = Merger(cache_bytes=0)
    model = merger.new_model(_config(family, "ties", 0.5))
    merger.merge_into(_config(family, "ties", 0.5), model)
    first = len(counting_passes)
    merger.merge_into(_config(family, "ties", 0.4), model)
    assert first > 0 and len(counting_passes) == 2 * first
    assert merger.cache.bytes == 0


def test_counts_of_one_base_are_not_served_for_another(family, counting_passes):
    """A task vector depends on its base: the same model over another base is counted again."""
    search = Merger(cache_bytes=2**30)
    config = _config(family, "ties", 0.5)
    model = search.new_model(config)
    search.merge_into(config, model)
    other = dict(config, base_model=str(family[1]), models=config["models"][1:])
    counting_passes.clear()
    search.merge_into(other, model)
    assert counting_passes  # family[2] over family[1]: new counts


def test_derived_entries_make_room_by_evicting_tensors():
    cache = TensorCache(1000)
    assert cache.put(("m", "a"), torch.zeros(100))  # 400 bytes
    assert cache.put(("m", "b"), torch.zeros(100))
    assert not cache.put(("m", "c"), torch.zeros(100))  # full: a tensor is turned away
    assert cache.put(("derived", 1), torch.zeros(60), derived=True)  # 240: "b" goes
    assert cache.get(("m", "b")) is None and cache.get(("m", "a")) is not None
    cache.reserve(700)  # jobs in flight take tensors first, then derived entries
    assert cache.get(("m", "a")) is None and cache.get(("derived", 1)) is not None
    cache.reserve(200)
    assert cache.get(("derived", 1)) is None and cache.bytes == 0
