"""End-to-end behaviour of the merge engine on tiny checkpoints built here.

Golden values come from straightforward re-implementations inside the tests (per-tensor loops
over the state dicts), never from the engine itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from mergesearch.merging import ConfigError, Merger, load_merge_config, run_merge
from mergesearch.merging.parameters import LayerPosition, interpolate_gradient
from tests.helpers.tiny_models import load_state, make_family, make_llama_family


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> list[Path]:
    return make_llama_family(tmp_path_factory.mktemp("llama"), n_models=3, seed=0)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def merged(config: dict, out: Path, **kwargs) -> dict[str, torch.Tensor]:
    run_merge(config, out, progress=False, **kwargs)
    return load_state(out)


def reference_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Textbook slerp over the flattened tensors, in float64 (independent of the engine)."""
    v0, v1 = a.double().flatten(), b.double().flatten()
    u0, u1 = v0 / v0.norm(), v1 / v1.norm()
    dot = float((u0 * u1).sum())
    if abs(dot) > 0.9995:
        out = (1 - t) * v0 + t * v1
    else:
        theta = math.acos(dot)
        out = (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)
    return out.reshape(a.shape).float()


def test_slerp_endpoints_give_the_models(family, tmp_path):
    base, other = family[0], family[1]
    for t, expected in ((0.0, base), (1.0, other)):
        cfg = {
            "models": [{"model": str(base)}, {"model": str(other)}],
            "merge_method": "slerp",
            "base_model": str(base),
            "parameters": {"t": t},
        }
        out = merged(cfg, tmp_path / f"t{t}")
        want = load_state(expected)
        assert out.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(out[name], want[name], atol=1e-6, rtol=0)


def test_linear_of_identical_models_is_the_model(family, tmp_path):
    cfg = {
        "models": [
            {"model": str(family[1]), "parameters": {"weight": 0.3}},
            {"model": str(family[1]), "parameters": {"weight": 0.7}},
        ],
        "merge_method": "linear",
    }
    # the same model twice is meaningless for linear: refused, then done with a copy
    with pytest.raises(ConfigError, match="twice"):
        load_merge_config(cfg)
    copy = family[1].parent / "copy_of_1"
    if not copy.exists():
        import shutil

        shutil.copytree(family[1], copy)
    cfg["models"][1]["model"] = str(copy)
    out = merged(cfg, tmp_path / "out")
    want = load_state(family[1])
    for name in want:
        torch.testing.assert_close(out[name], want[name], atol=1e-6, rtol=1e-6)


def test_slerp_filtered_gradients_match_independent_computation(family, tmp_path):
    attn = [0.0, 0.5, 0.3, 0.7, 1.0]
    mlp = [1.0, 0.5, 0.7, 0.3, 0.0]
    cfg = {
        "slices": [
            {
                "sources": [
                    {"model": str(family[1]), "layer_range": [0, 4]},
                    {"model": str(family[2]), "layer_range": [0, 4]},
                ]
            }
        ],
        "merge_method": "slerp",
        "base_model": str(family[1]),
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": attn},
                {"filter": "mlp", "value": mlp},
                {"value": 0.5},
            ]
        },
    }
    out = merged(cfg, tmp_path / "out")
    a, b = load_state(family[1]), load_state(family[2])

    def expected_t(name: str) -> float:
        if ".layers." not in name:
            anchors = 0.5  # neither filter matches embeddings / norm / lm_head
            return anchors
        layer = int(name.split(".")[2])
        frac = layer / 3
        anchors = attn if "self_attn" in name else mlp if "mlp" in name else [0.5]
        # straightforward piecewise-linear interpolation over evenly spaced anchors
        xs = [i / (len(anchors) - 1) for i in range(len(anchors))] if len(anchors) > 1 else [0.0]
        if len(anchors) == 1:
            return anchors[0]
        for i in range(len(xs) - 1):
            if xs[i] <= frac <= xs[i + 1]:
                w = (frac - xs[i]) / (xs[i + 1] - xs[i])
                return (1 - w) * anchors[i] + w * anchors[i + 1]
        raise AssertionError

    for name in a:
        want = reference_slerp(expected_t(name), a[name], b[name])
        torch.testing.assert_close(out[name], want, atol=1e-5, rtol=0, msg=name)


def test_gradient_interpolation_edges():
    assert interpolate_gradient([0.0, 1.0], LayerPosition(None, 4)) == 0.0  # non-layer: first
    assert interpolate_gradient([0.0, 1.0], LayerPosition(0, 1)) == 1.0  # one-layer slice
    assert interpolate_gradient([0.0, 1.0, 0.0], LayerPosition(2, 5)) == pytest.approx(1.0)
    assert interpolate_gradient([2.0], LayerPosition(3, 5)) == 2.0


def test_passthrough_stacks_and_renumbers_layers(family, tmp_path):
    cfg = {
        "slices": [
            {"sources": [{"model": str(family[1]), "layer_range": [0, 3]}]},
            {"sources": [{"model": str(family[2]), "layer_range": [1, 4]}]},
        ],
        "merge_method": "passthrough",
    }
    out_dir = tmp_path / "out"
    out = merged(cfg, out_dir)
    a, b = load_state(family[1]), load_state(family[2])
    for layer_out, (src, layer_in) in enumerate([(a, 0), (a, 1), (a, 2), (b, 1), (b, 2), (b, 3)]):
        name = f"model.layers.{layer_out}.mlp.down_proj.weight"
        assert torch.equal(out[name], src[f"model.layers.{layer_in}.mlp.down_proj.weight"])
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(out["model.norm.weight"], b["model.norm.weight"])
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.config.num_hidden_layers == 6
    generated = model.generate(torch.tensor([[0, 5, 6]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 6)


def test_task_arithmetic_matches_loop_over_state_dicts(family, tmp_path):
    cfg = {
        "models": [
            {"model": str(family[1]), "parameters": {"weight": 0.7}},
            {"model": str(family[2]), "parameters": {"weight": [0.2, 1.0]}},
        ],
        "merge_method": "task_arithmetic",
        "base_model": str(family[0]),
        "parameters": {"lambda": 1.3},
    }
    out = merged(cfg, tmp_path / "out")
    b, x1, x2 = (load_state(p) for p in family)
    for name in b:
        w2 = 0.2
        if ".layers." in name:
            w2 = 0.2 + 0.8 * int(name.split(".")[2]) / 3
        want = b[name] + 1.3 * (0.7 * (x1[name] - b[name]) + w2 * (x2[name] - b[name]))
        torch.testing.assert_close(out[name], want, atol=1e-6, rtol=1e-5, msg=name)


def test_sharded_output_equals_single_file(family, tmp_path):
    cfg = {
        "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in family[1:]],
        "merge_method": "linear",
    }
    single = merged(cfg, tmp_path / "single")
    sharded_dir = tmp_path / "sharded"
    sharded = merged(cfg, sharded_dir, shard_size="40k")
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    assert len(list(sharded_dir.glob("model-*.safetensors"))) > 3
    assert single.keys() == sharded.keys()
    assert all(torch.equal(single[k], sharded[k]) for k in single)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(sharded_dir)  # loads through the index


def test_sharded_inputs_are_read(tmp_path):
    paths = make_llama_family(tmp_path / "src", n_models=2, seed=3, max_shard_size="30KB")
    assert (paths[1] / "model.safetensors.index.json").is_file()
    cfg = {
        "models": [{"model": str(paths[1]), "parameters": {"weight": 1.0}}],
        "merge_method": "linear",
    }
    out = merged(cfg, tmp_path / "out")
    want = load_state(paths[1])
    assert all(torch.equal(out[k], want[k]) for k in want)


def dare_config(family, seed=None):
    cfg = {
        "models": [
            {"model": str(family[1]), "parameters": {"weight": 0.5, "density": 0.4}},
            {"model": str(family[2]), "parameters": {"weight": 0.5, "density": 0.6}},
        ],
        "merge_method": "dare_ties",
        "base_model": str(family[0]),
    }
    if seed is not None:
        cfg["seed"] = seed
    return cfg


def test_dare_is_reproducible_per_seed_whatever_the_threads(family, tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merged(dare_config(family), tmp_path / "a", seed=7)
        torch.set_num_threads(2)
        two = merged(dare_config(family), tmp_path / "b", seed=7)
    finally:
        torch.set_num_threads(threads)
    other = merged(dare_config(family), tmp_path / "c", seed=8)
    from_yaml_seed = merged(dare_config(family, seed=7), tmp_path / "d")
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert all(torch.equal(one[k], from_yaml_seed[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one)


def test_merge_into_live_model_equals_disk(family, tmp_path):
    cfg = load_merge_config(dare_config(family))
    merger = Merger()
    model = merger.new_model(cfg)
    stats = merger.merge_into(cfg, model, seed=5)
    assert stats.tensors > 0
    disk = merged(dare_config(family), tmp_path / "out", seed=5)
    live = model.state_dict()
    for name, tensor in disk.items():
        assert torch.equal(live[name], tensor), name


@pytest.mark.parametrize("tied", [False, True])
def test_live_model_built_without_initialising_computes_like_the_saved_merge(
    family, tied, tmp_path
):
    """``new_model`` skips the random initialisation of weights (the merge overwrites them);
    what the modules compute for themselves (rotary frequencies, not in the state dict) must
    still be there, and a tied lm_head must be the embedding again (initialisation ties it),
    so the live model's logits are the exported model's."""
    from transformers import AutoModelForCausalLM

    if tied:
        family = make_llama_family(tmp_path / "tied", n_models=3, seed=3, tie_word_embeddings=True)
    cfg = load_merge_config(dare_config(family))
    merger = Merger()
    torch.manual_seed(0)
    model = merger.new_model(cfg)
    assert torch.rand(()) == torch.rand((), generator=torch.Generator().manual_seed(0))
    merger.merge_into(cfg, model, seed=5)
    merged(dare_config(family), tmp_path / "out", seed=5)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, saved(tokens).logits)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "qwen2"])
def test_other_architectures_merge_and_load(arch, tmp_path):
    paths = make_family(tmp_path / "src", arch, n_models=3, seed=1)
    cfg = {
        "models": [
            {"model": str(p), "parameters": {"weight": 1.0, "density": 0.5}} for p in paths[1:]
        ],
        "merge_method": "ties",
        "base_model": str(paths[0]),
    }
    out_dir = tmp_path / "out"
    out = merged(cfg, out_dir)
    assert out.keys() == load_state(paths[0]).keys()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model(torch.tensor([[3, 4, 5]])).logits.shape[-1] == model.config.vocab_size


def test_passthrough_on_gpt2_renumbers_transformer_h(tmp_path):
    paths = make_family(tmp_path / "src", "gpt2", n_models=2, seed=2)
    cfg = {
        "slices": [
            {"sources": [{"model": str(paths[0]), "layer_range": [0, 4]}]},
            {"sources": [{"model": str(paths[1]), "layer_range": [2, 4]}]},
        ],
        "merge_method": "passthrough",
    }
    out_dir = tmp_path / "out"
    out = merged(cfg, out_dir)
    src = load_state(paths[1])
    assert torch.equal(
        out["transformer.h.5.mlp.c_fc.weight"], src["transformer.h.3.mlp.c_fc.weight"]
    )
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out_dir).n_layer == 6


def test_output_files_and_metadata(family, tmp_path):
    cfg = {
        "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in family[1:]],
        "merge_method": "linear",
        "dtype": "bfloat16",
    }
    out_dir = tmp_path / "out"
    out = merged(cfg, out_dir)
    assert {t.dtype for t in out.values()} == {torch.bfloat16}
    names = {p.name for p in out_dir.iterdir()}
    assert {
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "mergekit_config.yml",
        "README.md",
    } <= names
    assert "mergesearch_config.yml" not in names  # one copy of the config, mergekit's name
    from huggingface_hub import metadata_load
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(out_dir).dtype == torch.bfloat16
    AutoTokenizer.from_pretrained(out_dir)
    again = load_merge_config(out_dir / "mergekit_config.yml")
    assert again.to_dict() == load_merge_config(cfg).to_dict()
    card = (out_dir / "README.md").read_text()
    meta = metadata_load(out_dir / "README.md")
    assert meta["tags"] == ["merge", "mergekit", "mergesearch"]
    assert "base_model" not in meta  # local folders are not Hub ids
    assert "`linear`: a weighted average" in card and "arxiv.org/abs/2203.05482" in card
    assert (out_dir / "mergekit_config.yml").read_text().rstrip("\n") in card
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_the_written_yaml_carries_the_seed_a_random_merge_used(family, tmp_path):
    base, a, b = (str(p) for p in family[:3])
    cfg = {
        "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in (a, b)],
        "base_model": base,
        "merge_method": "dare_ties",
    }
    out_dir = run_merge(cfg, tmp_path / "out", seed=11, progress=False)
    assert load_merge_config(out_dir / "mergekit_config.yml").seed == 11
    again = run_merge(out_dir / "mergekit_config.yml", tmp_path / "again", progress=False)
    first, second = load_state(out_dir), load_state(again)
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert (
        "`seed: 11` makes `mergesearch merge` rebuild these exact tensors"
        in (out_dir / "README.md").read_text()
    )


def test_failure_midway_leaves_nothing(family, tmp_path, monkeypatch):
    from mergesearch.merging.methods import METHODS

    calls = {"n": 0}
    original = METHODS["linear"].fn

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    import dataclasses

    monkeypatch.setitem(METHODS, "linear", dataclasses.replace(METHODS["linear"], fn=failing))
    cfg = {
        "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in family[1:]],
        "merge_method": "linear",
    }
    from mergesearch.merging import MergeRuntimeError

    with pytest.raises(MergeRuntimeError, match="No space left"):
        run_merge(cfg, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_vocabulary_mismatch_needs_a_tokenizer_source(tmp_path):
    small = make_llama_family(tmp_path / "small", n_models=2, seed=0)
    big = make_family(tmp_path / "big", "llama", n_models=1, seed=0, vocab_size=300, names=["big"])
    cfg = {
        "models": [
            {"model": str(small[1]), "parameters": {"weight": 0.5}},
            {"model": str(big[0]), "parameters": {"weight": 0.5}},
        ],
        "merge_method": "linear",
    }
    with pytest.raises(ConfigError, match="different vocabulary sizes"):
        run_merge(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    cfg["tokenizer_source"] = str(small[1])
    out = merged(cfg, tmp_path / "out")
    want = (
        0.5 * load_state(small[1])["model.embed_tokens.weight"]
        + 0.5 * load_state(big[0])["model.embed_tokens.weight"][:288]
    )
    torch.testing.assert_close(out["model.embed_tokens.weight"], want)


# --- the policy ``mergesearch merge`` applies lives in the library ---------------------------


def _linear(paths: list[Path], weight: float) -> dict:
    return {
        "models": [{"model": str(p), "parameters": {"weight": weight}} for p in paths],
        "merge_method": "linear",
        "parameters": {"normalize": False},
    }


def test_run_merge_refuses_a_non_finite_result_and_writes_nothing(family, tmp_path):
    from mergesearch.merging import NonFiniteError

    out = tmp_path / "out"
    with pytest.raises(NonFiniteError) as info:
        run_merge(_linear(family[1:], 1e39), out, progress=False)  # beyond float32: inf
    message = str(info.value)
    assert "\n" not in message and "NaN or inf" in message and "check weights" in message
    assert list(tmp_path.iterdir()) == []


def test_run_merge_writes_a_non_finite_result_only_when_asked(family, tmp_path):
    out = merged(_linear(family[1:], 1e39), tmp_path / "out", check_finite=False)
    assert not all(torch.isfinite(t).all() for t in out.values())


def test_run_merge_names_a_damaged_source_and_writes_nothing(family, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(family[2], damaged)
    state = load_file(damaged / "model.safetensors")
    state["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(state, damaged / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        run_merge(_linear([family[1], damaged], 0.5), out, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{damaged}: tensor 'model.layers.1.mlp.down_proj.weight'")
    assert "damaged" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged"]
