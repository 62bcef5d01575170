"""The search's tensor cache holds at most ``cache_gb``: a search's memory is that bound plus
one live model plus the tensors in flight (measured at scale by ``bench/search_memory.py``)."""

from __future__ import annotations

import torch

import merging
from search.spec import load_spec
from tests.search.conftest import make_spec


def _config(models, weight: float) -> dict:
    refs = [{"model": str(models[k]), "parameters": {"weight": weight}} for k in ("a", "b")]
    return {"models": refs, "merge_method": "linear"}


def test_cache_evicts_at_the_bound(models):
    bound = 100_000  # bytes: a fraction of one tiny model (~0.6 MB of tensors)
    merger = merging.Merger(cache_bytes=bound)
    model = merger.new_model(_config(models, 0.5))
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for weight in (0.3, 0.5, 0.7):
        merger.merge_into(_config(models, weight), model)
        assert 0 < merger.cache.bytes <= bound
    kept = list(merger.cache._items.values())
    assert sum(t.numel() * t.element_size() for t in kept) == merger.cache.bytes
    assert merger.cache.bytes < 2 * total  # two sources were read: most of it was evicted

    unbounded = merging.Merger(cache_bytes=2**30)
    unbounded.merge_into(_config(models, 0.5), model)
    assert unbounded.cache.bytes == 2 * total  # every tensor of both sources


def test_a_tensor_larger_than_the_bound_is_not_cached():
    from merging.engine import _TensorCache

    cache = _TensorCache(1000)
    cache.put(("m", "big"), torch.zeros(1000))  # 4000 bytes
    assert cache.bytes == 0 and cache.get(("m", "big")) is None
    for i in range(5):
        cache.put(("m", str(i)), torch.zeros(100))  # 400 bytes each: two fit
    assert cache.bytes == 800 and cache.get(("m", "4")) is not None
    assert cache.get(("m", "0")) is None  # least recently used went first


def test_the_spec_sets_the_bound(models, tmp_path):
    paths = {"base": str(models["base"]), "a": str(models["a"]), "b": str(models["b"])}
    spec = load_spec(make_spec(paths, tmp_path, cache_gb=0.25))
    assert spec.cache_gb == 0.25
