"""Streamed sources: large jobs of flat-block methods read their inputs block by block."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mergesearch.merging import Merger
from mergesearch.merging.checkpoint import CheckpointSet
from mergesearch.merging.methods import selection as S
from mergesearch.merging.streamed import StreamedSource
from tests.helpers.tiny_models import load_state, make_llama_family

FLAT_BLOCK_METHODS = [
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs_ties",
    "della",
    "karcher",
    "sce",
    "slerp",
    "nuslerp",
    "multislerp",
    "ramplus_tl",
    "model_stock",
    "arcee_fusion",
]


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> list[Path]:
    return make_llama_family(tmp_path_factory.mktemp("llama"), n_models=3, seed=1)


def _two_d_tensor(folder: Path) -> tuple[CheckpointSet, str, torch.Tensor]:
    checkpoints = CheckpointSet()
    checkpoint = checkpoints.get(str(folder))
    name = max(
        (n for n, info in checkpoint.tensors.items() if len(info.shape) == 2),
        key=lambda n: checkpoint.tensors[n].shape[0],
    )
    return checkpoints, name, checkpoint.get(name)


def test_flat_slices_equal_the_tensor_read_whole(family):
    checkpoints, name, whole = _two_d_tensor(family[1])
    checkpoint = checkpoints.get(str(family[1]))
    flat = whole.reshape(-1)
    source = StreamedSource(checkpoint, name, tuple(whole.shape), whole.dtype).reshape(-1)
    assert source.shape == flat.shape and source.numel() == flat.numel()
    width = whole.shape[1]
    for start, stop in [(0, 1), (3, width + 5), (width, 3 * width), (7, flat.numel())]:
        assert torch.equal(source[start:stop], flat[start:stop])
    again = source[3 : width + 5]
    assert again is source[3 : width + 5]  # the same block twice in a row: read once
    as_bf16 = source.to(torch.bfloat16)
    assert torch.equal(as_bf16[5:900], flat[5:900].to(torch.bfloat16))
    rows = whole.shape[0] // 2  # a source cut to its first rows (a resized vocabulary)
    cut = StreamedSource(checkpoint, name, (rows, width), whole.dtype)
    assert torch.equal(cut.materialize(), whole[:rows])
    assert cut.reshape(-1).numel() == rows * width
    with pytest.raises(TypeError, match="flat blocks only"):
        cut.reshape(rows, width, 1)
    with pytest.raises(TypeError, match="flat view"):
        cut[0:4]  # the 2-D source itself is not indexed: rows would be meant
    for start, stop, step in [(0, flat.numel(), 7), (3, flat.numel() - 2, 1000), (5, 6, 3)]:
        assert torch.equal(source[start:stop:step], flat[start:stop:step])
    assert torch.equal(as_bf16[::13], flat[::13].to(torch.bfloat16))


def _config(method: str, family: list[Path], dtype: str | None = None) -> dict:
    cfg = _method_config(method, family)
    if dtype:
        cfg["dtype"] = dtype
    return cfg


def _method_config(method: str, family: list[Path]) -> dict:
    p = [str(x) for x in family]
    if method == "karcher":  # every model counts, no base, no per-model parameters
        return {"merge_method": "karcher", "models": [{"model": m} for m in p]}
    # no per-model parameters: ramplus_tl's epsilon splits the noise, sce selects half
    global_only = {"ramplus_tl": {"epsilon": 0.01}, "sce": {"select_topk": 0.5}, "model_stock": {}}
    if method in global_only:
        return {
            "merge_method": method,
            "base_model": p[0],
            "models": [{"model": m} for m in p[1:]],
            "parameters": global_only[method],
        }
    if method in ("slerp", "arcee_fusion"):  # the base and one model
        return {
            "merge_method": method,
            "base_model": p[0],
            "models": [{"model": p[1]}],
            "parameters": {"t": 0.3} if method == "slerp" else {},
        }
    if method in ("nuslerp", "multislerp"):  # task vectors over the base, by weight
        return {
            "merge_method": method,
            "base_model": p[0],
            "models": [
                {"model": m, "parameters": {"weight": w}}
                for m, w in zip(p[1:], (0.6, 0.4), strict=True)
            ],
        }
    cfg = {
        "merge_method": method,
        "base_model": p[0],
        "models": [
            {"model": m, "parameters": {"weight": w, "density": 0.5, "epsilon": 0.1}}
            for m, w in zip(p[1:], (0.6, 0.4), strict=True)
        ],
        "parameters": {"gamma": 0.02} if method.startswith("breadcrumbs") else {},
    }
    if method != "della":
        for m in cfg["models"]:
            del m["parameters"]["epsilon"]
    return cfg


def _merge(cfg: dict, out: Path, merger: Merger) -> dict[str, torch.Tensor]:
    merger.merge_to_disk(cfg, out, progress=False)
    return load_state(out)


@pytest.mark.parametrize(
    ("method", "dtype"), [(m, None) for m in FLAT_BLOCK_METHODS] + [("ties", "bfloat16")]
)
def test_streamed_jobs_merge_bit_for_bit(method, dtype, family, tmp_path):
    cfg = _config(method, family, dtype)
    whole = _merge(cfg, tmp_path / "whole", Merger(cache_bytes=0, threads=2))
    merger = Merger(cache_bytes=0, threads=2, stream_bytes=2)  # every job streams
    plan = merger.plan(cfg)
    parts = list(merger._parts(plan))
    assert [p.streamed for p in parts] == [job.mergeable and job.shape != () for job in plan.jobs]
    streamed = _merge(cfg, tmp_path / "streamed", merger)
    assert whole.keys() == streamed.keys()
    for name in whole:
        assert torch.equal(whole[name], streamed[name]), name
    assert merger.cache.reserved == 0 and merger.pool._lent_bytes == 0


@pytest.mark.parametrize(
    ("method", "dtype"),
    [(m, None) for m in ("ties", "breadcrumbs_ties", "sce", "arcee_fusion")]
    + [("sce", "bfloat16"), ("arcee_fusion", "bfloat16")],
)
def test_streamed_top_k_takes_its_strided_sample(method, dtype, family, tmp_path, monkeypatch):
    """float32 scores, and bfloat16 for sce (whose band pass is compiled) and arcee_fusion: the
    top-k samples every n/SAMPLE_SIZE-th score of the whole tensor and reads the rest block by
    block, from streamed sources as from tensors."""
    monkeypatch.setattr(S, "SAMPLE_MIN_NUMEL", 1024)  # the tiny tensors take the sampled path
    monkeypatch.setattr(S, "SAMPLE_SIZE", 256)
    cfg = _config(method, family, dtype)
    whole = _merge(cfg, tmp_path / "whole", Merger(cache_bytes=0, threads=2))
    streamed = _merge(cfg, tmp_path / "streamed", Merger(cache_bytes=0, threads=2, stream_bytes=2))
    for name in whole:
        assert torch.equal(whole[name], streamed[name]), name


def test_a_streamed_job_reserves_its_result_not_its_inputs(family, tmp_path):
    cfg = _config("ties", family)
    probe = Merger(cache_bytes=0)
    plan = probe.plan(cfg)
    job = max(plan.jobs, key=lambda j: probe._job_shares(plan, j)[0])
    inputs, _ = probe._job_shares(plan, job)
    bound = inputs  # the largest job's inputs alone fill the bound: it streams
    merger = Merger(cache_bytes=0, threads=2, stream_bytes=bound)
    assert merger._streams(plan, job)
    assert not Merger(cache_bytes=0, stream_bytes=2 * inputs + 2)._streams(plan, job)
    part = next(p for p in merger._parts(plan) if p.job is job)
    # its own float32 result (the base's buffer is not in memory to take)
    assert merger._part_shares(plan, part) == (0, math.prod(job.shape) * 4)
    merger.merge_to_disk(cfg, tmp_path / "out", progress=False)
    assert merger.cache.high_water <= bound
    assert merger.cache.reserved == 0


def test_methods_that_need_whole_tensors_never_stream(family):
    p = [str(x) for x in family]
    configs = [
        {  # one vector per row: rows are not flat blocks
            **_config("nuslerp", family),
            "parameters": {"nuslerp_flatten": False},
        },
        {  # a ratio per row: rows are not flat blocks
            **_config("model_stock", family),
            "parameters": {"filter_wise": True},
        },
        {
            "merge_method": "linear",
            "models": [{"model": m, "parameters": {"weight": 1}} for m in p],
        },
    ]
    merger = Merger(cache_bytes=0, stream_bytes=2)
    for cfg in configs:
        plan = merger.plan(cfg)
        assert not any(part.streamed for part in merger._parts(plan)), cfg["merge_method"]
    cached = Merger(cache_bytes=1)  # a search's cache keeps tensors whole
    plan = cached.plan(_config("ties", family))
    assert not any(part.streamed for part in cached._parts(plan))


@pytest.mark.parametrize(
    "method",
    [
        "dare_ties",
        "dare_linear",
        "breadcrumbs_ties",
        "della",
        "ramplus_tl",
        "sce",
        "slerp",
        "nuslerp",
        "model_stock",
        "multislerp",
        "karcher",
    ],
)
def test_compiled_loops_write_the_torch_bits_through_the_engine(
    method, family, tmp_path, monkeypatch
):
    """bfloat16 merges through the engine (2 workers, every job streamed): the files written
    with the compiled loops equal those written with the torch ops (MERGESEARCH_FUSED=0)."""
    cfg = _config(method, family, "bfloat16")
    written = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("MERGESEARCH_FUSED", flag)
        merger = Merger(cache_bytes=0, threads=2, stream_bytes=2)
        written[flag] = _merge(cfg, tmp_path / flag, merger)
    assert written["0"].keys() == written["1"].keys()
    for name, tensor in written["0"].items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, written["1"][name]), name
