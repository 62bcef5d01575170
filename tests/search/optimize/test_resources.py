"""Before its first trial a search knows its device and whether it fits in memory: a search
that cannot fit is refused with one line (need, have, the knob to turn) and leaves no study,
and ``device`` takes cpu, cuda, cuda:N or auto, the live model living (and being evaluated)
where it says."""

from __future__ import annotations

import pytest
import torch
import yaml

from mergesearch import merging
from mergesearch.search.cli import main
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize import resources
from mergesearch.search.optimize.study import run_search
from mergesearch.search.spec.load import load_spec
from tests.helpers.specs import make_spec

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def baseline_configs(family: dict[str, str]) -> list[dict]:
    models = [{"model": p, "parameters": {"weight": 0.5}} for k, p in family.items() if k != "base"]
    return [{"merge_method": "linear", "models": models, "dtype": "float32"}]


def test_a_search_that_cannot_fit_is_refused_before_any_study_exists(family, tmp_path):
    spec = make_spec(family, tmp_path, cache_gb=1.0, memory_limit_gb=1.5)
    with pytest.raises(SpecError) as info:
        run_search(spec, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "needs 2.0 GiB" in message and "memory_limit_gb allows 1.5 GiB" in message
    assert "cache_gb 1.0" in message and "runtime 1.0" in message
    assert "lower cache_gb to 0.5 or less" in message  # the knob that makes it fit
    assert not (tmp_path / "study.db").exists()  # refused before the storage was opened


def test_the_need_adds_up_the_live_model_cache_and_runtime(family, tmp_path):
    spec = load_spec(make_spec(family, tmp_path, cache_gb=0.25))
    merger = merging.Merger(cache_bytes=int(0.25 * 2**30))
    need = resources.estimate(spec, merger, baseline_configs(family), torch.device("cpu"))
    state = merger.new_model(baseline_configs(family)[0]).state_dict()
    assert need.model == sum(t.nbytes for t in state.values())
    assert need.cache == 2**28 and need.runtime == resources.RUNTIME_BYTES
    assert need.beyond_cache == 0 and need.pinned == 0 and not need.on_gpu
    assert need.host == need.model + need.cache + need.runtime

    limit = need.host / 2**30
    fits = load_spec(make_spec(family, tmp_path, cache_gb=0.25, memory_limit_gb=limit))
    resources.check_fit(fits, merger, baseline_configs(family), torch.device("cpu"))
    tight = load_spec(make_spec(family, tmp_path, cache_gb=0.25, memory_limit_gb=limit * 0.99))
    with pytest.raises(SpecError, match=r"lower cache_gb to 0\.2"):
        resources.check_fit(tight, merger, baseline_configs(family), torch.device("cpu"))
    with pytest.raises(SpecError, match=r"x 3 workers.*start fewer --workers"):
        resources.check_fit(fits, merger, baseline_configs(family), torch.device("cpu"), workers=3)


def test_a_job_larger_than_the_cache_counts_past_it(family, tmp_path):
    spec = load_spec(make_spec(family, tmp_path, cache_gb=0))
    merger = merging.Merger(cache_bytes=0)
    need = resources.estimate(spec, merger, baseline_configs(family), torch.device("cpu"))
    assert need.cache == 0 and need.beyond_cache > 0


def test_the_machine_reports_available_memory():
    have = resources.available_host_bytes()
    assert 2**26 < have < 2**50


def test_memory_limit_on_the_command_line_refuses_in_one_line(family, tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make_spec(family, tmp_path, cache_gb=1.0)))
    assert main(["search", str(path), "--memory-limit-gb", "0.5", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "memory_limit_gb allows 0.5 GiB" in err
    assert "cache_gb: 0 is not enough" in err and "dtype: bfloat16" in err
    assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "cuda0"])
def test_device_takes_cpu_cuda_cuda_n_or_auto(family, tmp_path, device):
    with pytest.raises(SpecError, match="use cpu, cuda, cuda:N"):
        load_spec(make_spec(family, tmp_path, device=device))


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_one_line_spec_error(family, tmp_path, capsys, device):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make_spec(family, tmp_path)))
    assert main(["search", str(path), "--device", device, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "device: cpu" in err
    assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_the_live_model_lives_and_is_scored_on_the_device(family, tmp_path, device):
    result = run_search(
        make_spec(family, tmp_path, device=device, budget={"trials": 3}),
        progress=False,
        heldout=False,
    )
    expected = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    assert resources.resolve_device(result.spec).type == expected


@needs_cuda
def test_a_model_on_the_gpu_equals_the_cpu_merge(family):
    configs = baseline_configs(family)
    merger = merging.Merger(cache_bytes=2**30, threads=2)
    cpu = merger.new_model(configs[0])
    merger.merge_into(configs[0], cpu)
    gpu = merger.new_model(configs[0], device="cuda")
    merger.merge_into(configs[0], gpu)
    assert next(gpu.parameters()).device.type == "cuda"
    for name, tensor in cpu.state_dict().items():
        assert torch.equal(gpu.state_dict()[name].cpu(), tensor), name


@no_cuda
def test_demo_refuses_a_missing_gpu_before_building_anything(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESEARCH_DEMO_DIR", str(tmp_path / "demo"))
    assert main(["demo", "--device", "cuda", "--n-trials", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err and "no CUDA device" in err
    assert not (tmp_path / "demo").exists()
