"""The real-size benchmark scripts run end to end at a tiny size: ``bench/scale.py`` (families
written tensor by tensor, the floor, both tools, a search trial, its results section, nothing
left behind) and ``bench/gpu_check.py`` (the CPU half without a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import scale
from bench._mergekit import find_mergekit

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("script", ["bench/scale.py", "bench/gpu_check.py"])
def test_help_works_without_a_gpu(script):
    proc = run(script, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_tiny_scale_run_times_merges_and_a_search_then_cleans_up(tmp_path):
    results = tmp_path / "RESULTS.md"
    work = tmp_path / "work"
    proc = run(
        "bench/scale.py", "--size", "tiny", "--methods", "linear", "ties", "--skip-mergekit",
        "--search-trials", "1", "--work", str(work), "--results", str(results),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = results.read_text()
    assert "## tiny (2 layers, 4 models" in text
    rows = [line for line in text.splitlines() if line.startswith(("| linear", "| ties"))]
    assert len(rows) == 2 and all("FAILED" not in r for r in rows)
    for row in rows:  # the merge's own seconds (from its output line) within the process's
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert 0 < float(cells[5]) <= float(cells[3]), row
        assert float(cells[7]) >= 0 and float(cells[8]) > 0, row  # the mapped floor, its ratio
    assert "| 1 |" in text  # the search trial's row
    assert not work.exists()  # family, outputs and study deleted


def test_a_family_the_disk_cannot_hold_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scale.shutil, "disk_usage", lambda _: type("U", (), {"free": 20 * 10**9})())
    assert scale.main(["--size", "7b", "--work", str(tmp_path / "w"), "--skip-mergekit"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs 57.9 GB" in err and "20.0 GB free" in err
    assert not (tmp_path / "w").exists()


def test_the_family_is_written_tensor_by_tensor_as_a_loadable_checkpoint(tmp_path):
    from mergesearch.merging.checkpoint import Checkpoint

    family = scale.FAMILIES["tiny"]
    base, tune = (tmp_path / "m0", tmp_path / "m1")
    scale.write_model(base, family, 2, 0)
    scale.write_model(tune, family, 2, 1)
    a, b = Checkpoint(base), Checkpoint(tune)
    assert a.names == [name for name, _ in scale.tensor_shapes(family, 2)]
    assert len(list(base.glob("*.safetensors"))) > 1  # 2 MB shards
    embed_a, embed_b = a.get("model.embed_tokens.weight"), b.get("model.embed_tokens.weight")
    assert embed_a.dtype == torch.bfloat16 and 0.015 < float(embed_a.float().std()) < 0.025
    delta = (embed_b.float() - embed_a.float()).std()
    assert 0.0005 < float(delta) < 0.002  # a fine-tune: the base plus small noise


@pytest.mark.skipif(find_mergekit() is None, reason="mergekit 0.1.5 venv not installed")
def test_mergekit_past_its_time_box_is_estimated_from_a_subset(tmp_path):
    results = tmp_path / "RESULTS.md"
    proc = run(
        "bench/scale.py", "--size", "tiny", "--methods", "linear", "--no-verify",
        "--mergekit-timeout", "0.5", "--work", str(tmp_path / "w"), "--results", str(results),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = results.read_text()
    assert "stopped at the 0 s time box" in text or "stopped at the 1 s time box" in text
    row = next(line for line in text.splitlines() if line.startswith("| linear"))
    assert "| ~" in row  # mergekit's seconds are an estimate


def test_gpu_check_runs_the_cpu_half_without_a_gpu():
    proc = run("bench/gpu_check.py", "--size", "tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| demo | ties | float32 |" in proc.stdout
    if not torch.cuda.is_available():
        assert proc.stdout.strip().splitlines()[-1].startswith("no CUDA device here")


def test_the_floor_is_the_fastest_of_its_runs(tmp_path, monkeypatch):
    """One floor measurement moves severalfold on a shared disk: the fastest of the runs is
    kept, read and write from the same run; passthrough's read is scaled to one output."""
    reads = iter([(4.0, 100), (2.0, 100), (3.0, 100), (4.0, 100)])
    maps = iter([0.5, 0.25, 0.75, 1.0])
    writes = iter([5.0, 6.0, 1.0, 1.0])
    monkeypatch.setattr(scale, "read_once", lambda paths: next(reads))
    monkeypatch.setattr(scale, "map_once", lambda paths: next(maps))
    monkeypatch.setattr(scale, "write_once", lambda target, nbytes: next(writes))
    assert scale.io_floor([], 50, tmp_path, 3) == (3.0, 4.0, 1.75)  # runs: 9, 8, 4 s
    assert scale.io_floor([], 50, tmp_path, 1, share_read=True) == (2.0, 3.0, 1.5)


def test_the_floor_reads_and_writes_real_bytes(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 3_000_000)
    read_s, floor_s, mapped_s = scale.io_floor([model], 2_000_000, tmp_path, 2)
    assert 0 < read_s < floor_s and mapped_s > 0
    assert scale.map_once([model]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the floor's file is removed
