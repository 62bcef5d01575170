"""Output files written with O_DIRECT through a staging buffer: the same bytes as a buffered
write, in order, the padding of the last write cut off, a buffered fallback."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
import torch

from mergesearch.merging import Merger, direct_io
from tests.helpers.tiny_models import make_llama_family

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")


def _pieces() -> list[bytes | torch.Tensor]:
    """Writes of sizes around the 8 KiB staging buffer used below: bytes and tensors of
    several dtypes, an empty one, one exactly a buffer long and one over two."""
    g = torch.Generator().manual_seed(0)
    return [
        b"\x05\x00\x00\x00\x00\x00\x00\x00{hdr}",
        torch.randint(0, 255, (4095,), dtype=torch.uint8, generator=g),
        torch.randn(64, 64, generator=g).to(torch.bfloat16),  # exactly 8192 bytes
        b"",
        torch.empty(0),
        torch.randn(5001, generator=g),  # 20004 bytes: spans three buffers
        torch.randn(3, 7, generator=g, dtype=torch.float64).t(),  # not contiguous
        b"x",
    ]


def _expected(pieces: list[bytes | torch.Tensor]) -> bytes:
    return b"".join(
        p
        if isinstance(p, bytes)
        else p.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        for p in pieces
    )


def test_staged_direct_writes_give_the_bytes_in_order(tmp_path):
    path = tmp_path / "out.bin"
    out = direct_io.DirectFile(path, staging=8192)
    assert fcntl.fcntl(out._fd, fcntl.F_GETFL) & os.O_DIRECT
    pieces = _pieces()
    for piece in pieces:
        out.write(piece)
    out.close()
    want = _expected(pieces)
    assert len(want) % direct_io.ALIGN  # the last write was padded and cut back
    assert path.read_bytes() == want


def test_a_length_that_fills_the_buffers_exactly_needs_no_padding(tmp_path):
    path = tmp_path / "out.bin"
    out = direct_io.DirectFile(path, staging=8192)
    data = torch.arange(4096, dtype=torch.int32)  # 16384 bytes: two full buffers
    out.write(data)
    out.close()
    assert path.read_bytes() == data.numpy().tobytes()


def test_switched_off_it_writes_buffered(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESEARCH_DIRECT_IO", "0")
    out = direct_io.open_output(tmp_path / "out.bin")
    assert isinstance(out, direct_io.BufferedFile)
    pieces = _pieces()
    for piece in pieces:
        out.write(piece)
    out.close()
    assert (tmp_path / "out.bin").read_bytes() == _expected(pieces)


def test_a_filesystem_that_refuses_direct_writes_gets_buffered_ones(tmp_path, monkeypatch):
    """Some filesystems take O_DIRECT at open and refuse the writes (EINVAL): the flag is
    cleared on the open file and the bytes still arrive whole."""
    real_write = os.write

    def refusing_write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_io.os, "write", refusing_write)
    path = tmp_path / "out.bin"
    out = direct_io.DirectFile(path, staging=8192)
    pieces = _pieces()
    for piece in pieces:
        out.write(piece)
    assert not fcntl.fcntl(out._fd, fcntl.F_GETFL) & os.O_DIRECT
    out.close()
    assert path.read_bytes() == _expected(pieces)


def test_other_write_errors_are_not_swallowed(tmp_path, monkeypatch):
    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_io.os, "write", full_disk)
    out = direct_io.DirectFile(tmp_path / "out.bin", staging=8192)
    with pytest.raises(OSError, match="No space") as failed:
        out.write(torch.zeros(8192, dtype=torch.uint8))
    # closing still reports the full disk (not that the failed write's traceback holds a view
    # of the staging buffer), and lets the file go
    with pytest.raises(OSError, match="No space"):
        out.close()
    assert out._fd == -1
    del failed


def test_a_merge_writes_the_same_files_direct_and_buffered(tmp_path, monkeypatch):
    family = make_llama_family(tmp_path / "family", n_models=2, seed=3)
    cfg = {
        "merge_method": "slerp",
        "base_model": str(family[0]),
        "models": [{"model": str(family[1])}],
        "parameters": {"t": 0.4},
        "dtype": "bfloat16",
    }
    written: dict[str, dict[str, bytes]] = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("MERGESEARCH_DIRECT_IO", flag)
        out = tmp_path / f"out-{flag}"
        Merger(threads=2).merge_to_disk(cfg, out, shard_size=300_000, progress=False)
        written[flag] = {p.name: p.read_bytes() for p in sorted(Path(out).glob("model*"))}
    assert [n for n in written["1"] if n.endswith(".safetensors")][1:]  # several shards
    assert written["1"] == written["0"]
