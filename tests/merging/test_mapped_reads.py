"""Sources mapped from their files (``Checkpoint.map_rows``) instead of copied out of them."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch

from mergesearch.merging import Merger
from mergesearch.merging.checkpoint import CheckpointSet
from mergesearch.merging.errors import ConfigError
from tests.helpers.tiny_models import load_state, make_llama_family

LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> list[Path]:
    return make_llama_family(tmp_path_factory.mktemp("llama"), n_models=3, seed=4)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def test_mapped_rows_equal_the_rows_read(family):
    checkpoint = CheckpointSet().get(str(family[1]))
    checked = 0
    for name, info in checkpoint.tensors.items():
        if not info.shape:
            continue
        rows = info.shape[0]
        for start, stop in [(0, rows), (rows // 3, rows), (1, max(2, rows // 2))]:
            if start >= stop:
                continue
            mapped = checkpoint.map_rows(name, start, stop)
            assert mapped is not None, name
            read = checkpoint.read_rows(
                name, start, stop, torch.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
            )
            assert mapped.dtype == read.dtype and torch.equal(mapped, read), name
            checked += 1
    assert checked > 20  # every tensor kind, most at offsets that are not page-aligned


def test_writing_to_a_map_never_reaches_the_file(family, tmp_path):
    checkpoint = CheckpointSet().get(str(family[2]))
    name = next(n for n, i in checkpoint.tensors.items() if len(i.shape) == 2)
    before = _digest(family[2])
    mapped = checkpoint.map_rows(name, 0, 2)
    assert mapped is not None
    mapped.fill_(7.0)  # copy on write: this process's pages only
    assert torch.all(mapped == 7.0)
    del mapped
    assert _digest(family[2]) == before
    assert not torch.all(checkpoint.get(name)[:2] == 7.0)


def _raw_safetensors(folder: Path, tensors: list[tuple[str, str, list[int], bytes]]) -> None:
    """A safetensors file laid out exactly as given (no alignment padding), and a config."""
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header).encode()
    folder.mkdir(parents=True)
    with (folder / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(t[3] for t in tensors))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))


def test_data_not_aligned_to_its_dtype_is_read_not_mapped(tmp_path, monkeypatch):
    weights = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    _raw_safetensors(
        tmp_path / "odd",
        [("flag", "U8", [1], b"\x01"), ("w", "F32", [4, 3], weights.numpy().tobytes())],
    )
    checkpoint = CheckpointSet().get(str(tmp_path / "odd"))
    assert checkpoint.tensors["w"].start % 4 != 0  # the header makes it odd
    assert checkpoint.map_rows("w", 0, 4) is None
    assert checkpoint.map_rows("flag", 0, 1) is not None  # bytes are aligned anywhere
    assert torch.equal(checkpoint.get("w"), weights)
    monkeypatch.setenv("MERGESEARCH_MAP", "0")
    assert checkpoint.map_rows("flag", 0, 1) is None


def test_a_file_cut_short_after_it_was_opened_is_an_error_not_a_crash(family, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(family[1], copy)
    checkpoint = CheckpointSet().get(str(copy))
    name, info = max(checkpoint.tensors.items(), key=lambda item: item[1].start)
    with (copy / "model.safetensors").open("r+b") as f:
        f.truncate(info.start + info.nbytes // 2)
    with pytest.raises(ConfigError, match="truncated safetensors file"):
        checkpoint.map_rows(name, 0, info.shape[0])


def _configs(family: list[Path]) -> dict[str, dict]:
    p = [str(x) for x in family]
    models = [
        {"model": m, "parameters": {"weight": w, "density": 0.5}}
        for m, w in zip(p[1:], (0.6, 0.4), strict=True)
    ]
    return {
        # the result goes into the base's buffer when the merge owns it, never into a map
        "ties_bf16": {"merge_method": "ties", "base_model": p[0], "models": models, "dtype": "bfloat16"},
        "linear": {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1}} for m in p]},
        "nuslerp": {
            "merge_method": "nuslerp",
            "base_model": p[0],
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(p[1:], (0.6, 0.4), strict=True)],
        },
        "passthrough": {
            "merge_method": "passthrough",
            "slices": [{"sources": [{"model": p[1], "layer_range": [0, 2]}]},
                       {"sources": [{"model": p[2], "layer_range": [1, 4]}]}],
        },
    }  # fmt: skip


@pytest.mark.parametrize("method", ["ties_bf16", "linear", "nuslerp", "passthrough"])
@pytest.mark.parametrize("stream_bytes", [2, 768 << 20])  # every job streamed, or none
def test_merges_from_maps_equal_merges_from_reads(
    method, stream_bytes, family, tmp_path, monkeypatch
):
    cfg = _configs(family)[method]
    sources = {f: _digest(f) for f in family}
    monkeypatch.setenv("MERGESEARCH_MAP", "0")
    read = Merger(cache_bytes=0, threads=2, stream_bytes=stream_bytes)
    read.merge_to_disk(cfg, tmp_path / "read", progress=False)
    monkeypatch.setenv("MERGESEARCH_MAP", "1")
    mapped = Merger(cache_bytes=0, threads=2, stream_bytes=stream_bytes)
    mapped.merge_to_disk(cfg, tmp_path / "mapped", progress=False)
    a, b = load_state(tmp_path / "read"), load_state(tmp_path / "mapped")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert {f: _digest(f) for f in family} == sources
    assert mapped.cache.reserved == 0 and mapped.pool._lent_bytes == 0


def test_a_mapped_base_never_takes_the_result(family):
    """A method that computes into its base's buffer (``result_in_base``) does so only when the
    merge owns that buffer: a map would turn every written page into a private copy."""
    cfg = {**_configs(family)["ties_bf16"], "dtype": "float32"}  # the sources' own: no copy
    merger = Merger(cache_bytes=0, threads=2)
    plan = merger.plan(cfg)
    job = max((j for j in plan.jobs if j.mergeable), key=lambda j: len(j.shape) and j.shape[0])
    inputs, base = merger._read_part(next(p for p in merger._parts(plan) if p.job is job))
    assert merger.pool.holds(base)  # mapped, not a buffer of its own
    kept = base.clone()
    result = merger._compute(plan, job, inputs, base, 0, merger.pool)
    assert result.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    assert torch.equal(base, kept)
    # the engine reads such a base into a buffer of its own, which then takes the result
    part = next(p for p in merger._parts(plan) if p.job is job)
    assert merger._result_in_base(plan, job) == "as read"
    inputs, base = merger._read_part(part, True)
    assert not merger.pool.holds(base) and all(merger.pool.holds(x) for x in inputs)
    result = merger._compute(plan, job, inputs, base, 0, merger.pool)
    assert result.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    # in another compute dtype the result goes into the base's converted copy: it stays mapped
    converted = merger.plan(_configs(family)["ties_bf16"])
    job = next(j for j in converted.jobs if j.out_name == job.out_name)
    assert merger._result_in_base(converted, job) == "converted"
    assert merger._job_shares(converted, job)[1] == 0  # nor does it need a buffer of its own


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_maps_live_as_long_as_their_jobs(family, tmp_path, monkeypatch):
    from mergesearch.merging import checkpoint as C

    made, seen_mapped = [], []
    original = C.Checkpoint.map_rows

    def spy(self, name, start, stop):
        mapped = original(self, name, start, stop)
        if mapped is not None:
            made.append(name)
            seen_mapped.append(str(self.folder) in Path("/proc/self/maps").read_text())
        return mapped

    monkeypatch.setattr(C.Checkpoint, "map_rows", spy)
    merger = Merger(cache_bytes=0, threads=2)
    merger.merge_to_disk(_configs(family)["ties_bf16"], tmp_path / "out", progress=False)
    assert len(made) > 10 and all(seen_mapped)  # the sources were mapped, not read
    gc.collect()
    maps = Path("/proc/self/maps").read_text()
    assert not [line for line in maps.splitlines() if any(str(f) in line for f in family)]


def _mapped_rss(path: Path) -> int:
    """Bytes of ``path``'s maps resident in this process (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a map's first line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/smaps")
def test_a_streamed_pass_keeps_a_window_of_its_source_in_memory(tmp_path, monkeypatch):
    from mergesearch.merging import streamed
    from mergesearch.merging.streamed import StreamedSource

    monkeypatch.setattr(streamed, "RELEASE_BYTES", 1 << 20)
    rows, width = 2048, 4096  # 16 MB of bfloat16
    values = torch.randn(rows, width).bfloat16()
    _raw_safetensors(
        tmp_path / "big", [("w", "BF16", [rows, width], values.view(torch.int16).numpy().tobytes())]
    )
    checkpoint = CheckpointSet().get(str(tmp_path / "big"))
    source = StreamedSource(checkpoint, "w", (rows, width), torch.bfloat16).reshape(-1)
    flat, block, most = values.reshape(-1), 1 << 18, 0
    for _ in range(2):  # a second pass starts over: the first one's tail goes
        for start in range(0, flat.numel(), block):
            assert torch.equal(source[start : start + block], flat[start : start + block])
            most = max(most, _mapped_rss(tmp_path / "big" / "model.safetensors"))
    assert source._mapped() is not None  # served from a map, not read
    assert 0 < most <= 6 << 20  # a 1 MB window, the block, the folios around it: not 16 MB


@pytest.mark.skipif(not LINUX, reason="mincore and posix_fadvise")
def test_a_tensor_the_page_cache_does_not_hold_is_read_not_mapped(tmp_path):
    rows, width = 512, 1024  # 1 MB of bfloat16
    values = torch.randn(rows, width).bfloat16()
    data = values.view(torch.int16).numpy().tobytes()
    _raw_safetensors(tmp_path / "cold", [("w", "BF16", [rows, width], data)])
    path = tmp_path / "cold" / "model.safetensors"
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
    finally:
        os.close(fd)
    checkpoint = CheckpointSet().get(str(tmp_path / "cold"))
    fd = os.open(path, os.O_RDONLY)
    try:  # asked apart from mincore: a read that must not wait fails on an uncached page
        os.preadv(fd, [bytearray(4096)], checkpoint.tensors["w"].start + 65536, os.RWF_NOWAIT)
        pytest.skip("this filesystem kept the file cached whatever it was told")
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    assert checkpoint.map_lazily("w", 0, rows) is None
    read = checkpoint.read_rows("w", 0, rows, torch.empty(rows, width, dtype=torch.bfloat16))
    assert torch.equal(read, values)  # the read brought it into the cache: now it maps
    mapped = checkpoint.map_rows("w", 0, rows)
    assert mapped is not None and torch.equal(mapped, values)
