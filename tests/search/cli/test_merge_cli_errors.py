"""Bad input to ``mergesearch merge``: one line on stderr, exit code 2, no traceback, no output."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mergesearch.search.cli import main
from tests.helpers.tiny_models import make_family, make_llama_family


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    base, a, b = make_llama_family(root / "llama", n_models=3, seed=0)
    wide = make_family(root / "wide", "llama", n_models=1, names=["wide"], hidden_size=96)[0]
    vocab = make_family(root / "vocab", "llama", n_models=1, names=["vocab"], vocab_size=300)[0]
    corrupt = root / "corrupt"
    shutil.copytree(a, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    truncated = root / "truncated"
    shutil.copytree(a, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    pickled = root / "pickled"
    shutil.copytree(a, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    return {
        "base": base,
        "a": a,
        "b": b,
        "wide": wide,
        "vocab": vocab,
        "corrupt": corrupt,
        "truncated": truncated,
        "pickled": pickled,
    }


def ties(models, *extra, **params):
    entries = [
        {"model": str(models[k]), "parameters": {"weight": 0.5, **params}} for k in ("a", *extra)
    ]
    return {"models": entries, "merge_method": "ties", "base_model": str(models["base"])}


CASES = {
    "missing model path": (
        lambda m: {
            **ties(m),
            "models": [{"model": "/nonexistent/model", "parameters": {"weight": 1}}],
        },
        "model folder not found",
    ),
    "missing base_model": (
        lambda m: {k: v for k, v in ties(m, "b").items() if k != "base_model"},
        "base_model: is required",
    ),
    "unknown method": (lambda m: {**ties(m), "merge_method": "tiess"}, "did you mean 'ties'"),
    "unknown parameter": (lambda m: ties(m, dnesity=0.5), "did you mean 'density'"),
    "density above 1": (lambda m: ties(m, density=1.5), "outside (0, 1]"),
    "density zero": (lambda m: ties(m, density=0.0), "outside (0, 1]"),
    "slerp with 3 models": (
        lambda m: {
            "models": [{"model": str(m[k])} for k in ("a", "b", "wide")],
            "merge_method": "slerp",
            "base_model": str(m["a"]),
            "parameters": {"t": 0.5},
        },
        "at most 1",
    ),
    "layer_range beyond depth": (
        lambda m: {
            "slices": [{"sources": [{"model": str(m["a"]), "layer_range": [2, 9]}]}],
            "merge_method": "passthrough",
        },
        "goes beyond",
    ),
    "layer_range unequal lengths": (
        lambda m: {
            "slices": [
                {
                    "sources": [
                        {"model": str(m["a"]), "layer_range": [0, 4]},
                        {"model": str(m["b"]), "layer_range": [0, 3]},
                    ]
                }
            ],
            "merge_method": "slerp",
            "base_model": str(m["a"]),
            "parameters": {"t": 0.5},
        },
        "equal lengths",
    ),
    "mismatched shapes": (lambda m: ties(m, "wide"), "different shapes"),
    "different vocabulary sizes": (lambda m: ties(m, "vocab"), "tokenizer_source"),
    "corrupted safetensors header": (lambda m: ties(m, "corrupt"), "corrupted safetensors"),
    "truncated safetensors": (lambda m: ties(m, "truncated"), "truncated safetensors"),
    "pickle without opt-in": (lambda m: ties(m, "pickled"), "--allow-pickle"),
    "wrong type": (lambda m: ties(m, density="half"), "must be a number"),
    "empty model list": (lambda m: {**ties(m), "models": []}, "non-empty list"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_output(case, models, tmp_path, capsys):
    make, expected = CASES[case]
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(make(models)))
    out = tmp_path / "out"
    code = main(["merge", str(config), str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert expected in err
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["merge.yaml"]


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    config = tmp_path / "merge.yaml"
    config.write_text("models:\n  - model: a\n   parameters: [\n")
    assert main(["merge", str(config), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML at line" in err and str(config) in err


def test_existing_output_needs_overwrite(models, tmp_path, capsys):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(ties(models, "b", density=0.5)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["merge", str(config), str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["merge", str(config), str(out), "--no-progress", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert re.fullmatch(
        rf"merged \d+ tensors \(ties\) into {out} in \d+\.\d s\n", capsys.readouterr().out
    )


def test_output_inside_a_source_is_refused(models, tmp_path, capsys):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(ties(models, "b")))
    assert main(["merge", str(config), str(models["a"] / "merged")]) == 2
    assert "inside source model" in capsys.readouterr().err
    assert not (models["a"] / "merged").exists()


def test_pickle_with_opt_in_loads_weights_only(models, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(ties(models, "pickled", density=0.5)))
    out = tmp_path / "out"
    assert main(["merge", str(config), str(out), "--allow-pickle", "--no-progress"]) == 0
    assert (out / "model.safetensors").is_file()


def test_real_process_exit_code_and_stderr(models, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(ties(models, density=2)))
    proc = subprocess.run(
        [sys.executable, "-m", "mergesearch", "merge", str(config), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "density 2" in lines[0], proc.stderr
