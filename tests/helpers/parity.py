"""The parity cases: merge YAMLs that both mergekit and ``mergesearch merge`` run on tiny models.

Each ``Case`` builds its inputs with ``tests.helpers.tiny_models``, writes one YAML, runs it
through both tools (``bench/_mergekit.py`` runs mergekit and compares the outputs) and says what
the comparison may leave out: positions tied at a top-k cut-off (``cut``), or elements of
arcee_fusion's sampled tensors that took the other input (``max_flipped``).
``tests/merging/test_mergekit_parity.py`` asserts every case; ``bench/parity.py`` prints them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench._mergekit import Comparison, TopKCut, compare_outputs, run_mergekit
from tests.helpers.tiny_models import make_family

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[list[str]], dict[str, Any]]  # model paths -> YAML document
    arch: str = "llama"
    n_models: int = 3
    family: dict[str, Any] = field(default_factory=dict)  # tiny_models config overrides
    layers_out: int = 4
    cut: TopKCut | None = None
    # arcee_fusion: fraction of the elements of tensors over _mergekit.SAMPLED_NUMEL allowed to
    # take the other input than mergekit's (its threshold comes from a random sample there)
    max_flipped: float | None = None

    @property
    def method(self) -> str:
        return self.build(["m0", "m1", "m2"])["merge_method"]


def _models(paths: list[str], params: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    out = []
    for path, p in zip(paths, params, strict=False):
        out.append({"model": path, **({"parameters": p} if p else {})})
    return out


TUTORIAL_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def _linear(p: list[str]) -> dict[str, Any]:
    weights = [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]
    return {"merge_method": "linear", "models": _models(p, weights), "dtype": "float32"}


def _linear_gradient(p: list[str]) -> dict[str, Any]:
    weights = [
        {"weight": [1.0, 0.2, 0.6]},
        {"weight": [{"filter": "mlp", "value": 0.7}, {"value": -0.2}]},
        {"weight": 0.4},
    ]
    doc = {"merge_method": "linear", "models": _models(p, weights), "dtype": "float32"}
    return {**doc, "parameters": {"normalize": False}}


def _slerp(p: list[str]) -> dict[str, Any]:
    sources = [{"model": p[0], "layer_range": [0, 4]}, {"model": p[1], "layer_range": [0, 4]}]
    return {
        "slices": [{"sources": sources}],
        "merge_method": "slerp",
        "base_model": p[0],
        "parameters": {"t": TUTORIAL_T},
        "dtype": "float32",
    }


def _nuslerp(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "nuslerp",
        "models": _models(p[:2], [{"weight": 0.7}, {"weight": 0.3}]),
        "dtype": "float32",
    }


def _nuslerp_base(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "nuslerp",
        "base_model": p[0],
        "models": _models(p[1:], [{"weight": 0.4}, {"weight": 0.6}]),
        "parameters": {"nuslerp_flatten": False},
        "dtype": "float32",
    }


def _task_arithmetic(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "task_arithmetic",
        "base_model": p[0],
        "models": _models(p[1:], [{"weight": 1.0}, {"weight": 0.5}]),
        "parameters": {"lambda": 0.9},
        "dtype": "float32",
    }


TIES_DENSITIES = (0.5, 0.7)
BREADCRUMBS_DENSITIES = (0.8, 0.9)


def _ties(p: list[str]) -> dict[str, Any]:
    params = [{"weight": 0.6, "density": TIES_DENSITIES[0]}, {"weight": 0.4}]
    params[1]["density"] = TIES_DENSITIES[1]
    return {
        "merge_method": "ties",
        "base_model": p[0],
        "models": _models(p[1:], params),
        "dtype": "float32",
    }


def _breadcrumbs(p: list[str]) -> dict[str, Any]:
    # Default gamma 0.01: the 64-element norm vectors get no outlier cut (floor(0.64) == 0),
    # the matrices do, so both branches of the rank window are exercised.
    params = [{"weight": 0.6, "density": BREADCRUMBS_DENSITIES[0]}, {"weight": 0.5}]
    params[1]["density"] = BREADCRUMBS_DENSITIES[1]
    return {
        "merge_method": "breadcrumbs",
        "base_model": p[0],
        "models": _models(p[1:], params),
        "dtype": "float32",
    }


def _model_stock(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "model_stock",
        "base_model": p[0],
        "models": _models(p[1:], [None, None]),
        "dtype": "float32",
    }


def _passthrough(p: list[str]) -> dict[str, Any]:
    scaled = {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]}
    return {
        "slices": [
            {"sources": [{"model": p[0], "layer_range": [0, 3]}]},
            {"sources": [{"model": p[1], "layer_range": [1, 4], "parameters": scaled}]},
            {"sources": [{"model": p[2], "layer_range": [2, 4]}]},
        ],
        "merge_method": "passthrough",
        "dtype": "float32",
    }


def _gpt2_slerp(p: list[str]) -> dict[str, Any]:
    t = [
        {"filter": "attn", "value": [0, 0.5, 1]},
        {"filter": "mlp", "value": [1, 0]},
        {"value": 0.3},
    ]
    return {
        "merge_method": "slerp",
        "base_model": p[0],
        "models": _models(p[:2], [None, None]),
        "parameters": {"t": t},
        "dtype": "float32",
    }


def _ties_qwen2(p: list[str]) -> dict[str, Any]:
    doc = _ties(p)
    return {**doc, "parameters": {"normalize": False, "lambda": 1.5}}


# --- the seven newer methods (mergekit 0.1.5) ---------------------------------------------------


def _multislerp(p: list[str]) -> dict[str, Any]:
    weights = [{"weight": 0.5}, {"weight": [0.2, 0.6]}, {"weight": 0.3}]
    return {
        "merge_method": "multislerp",
        "models": _models(p, weights),
        "parameters": {"eps": 1e-6},
        "dtype": "float32",
    }


def _multislerp_base(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "multislerp",
        "base_model": p[0],
        "models": _models(p[1:], [{"weight": 0.7}, {"weight": 0.4}]),
        "parameters": {"normalize_weights": False},
        "dtype": "float32",
    }


def _karcher(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "karcher",
        "models": _models(p, [None, None, None]),
        "parameters": {"max_iter": 3, "tol": 1e-7},
        "dtype": "float32",
    }


def _karcher_base(p: list[str]) -> dict[str, Any]:
    # the base is not listed: both tools add it as a third, equally weighted input
    return {
        "merge_method": "karcher",
        "base_model": p[0],
        "models": _models(p[1:], [None, None]),
        "parameters": {"max_iter": 0},
        "dtype": "float32",
    }


def _karcher_one_step(p: list[str]) -> dict[str, Any]:
    return {**_karcher(p), "parameters": {"max_iter": 1, "tol": 1e-4}}


def _sce(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "sce",
        "base_model": p[0],
        "models": _models(p[1:], [None, None]),
        "parameters": {"select_topk": 0.5},
        "dtype": "float32",
    }


def _sce_gradient(p: list[str]) -> dict[str, Any]:
    topk = [{"filter": "mlp", "value": [0.1, 0.9]}, {"value": 0.3}]
    return {**_sce(p), "parameters": {"select_topk": topk, "int8_mask": True}}


def _nearswap(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "nearswap",
        "base_model": p[0],
        "models": _models(p[:2], [None, None]),
        "parameters": {"t": 0.001},
        "dtype": "float32",
    }


def _nearswap_gradient(p: list[str]) -> dict[str, Any]:
    t = [{"filter": "self_attn", "value": [0.0005, 0.003]}, {"value": 0.02}]
    return {**_nearswap(p), "parameters": {"t": t}}


def _arcee_fusion(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "arcee_fusion",
        "base_model": p[0],
        "models": _models(p[:2], [None, None]),
        "dtype": "float32",
    }


def _arcee_fusion_swapped(p: list[str]) -> dict[str, Any]:
    # the fine-tune as base: importance is not symmetric in the two models
    return {**_arcee_fusion(p), "base_model": p[1]}


def _ram(p: list[str]) -> dict[str, Any]:
    return {
        "merge_method": "ram",
        "base_model": p[0],
        "models": _models(p[1:], [None, None]),
        "parameters": {"epsilon": 1e-3},
        "dtype": "float32",
    }


def _ram_gradient(p: list[str]) -> dict[str, Any]:
    return {**_ram(p), "parameters": {"epsilon": [0.0, 2e-3, 5e-4]}}


def _ramplus_tl(p: list[str]) -> dict[str, Any]:
    doc = _ram(p)
    return {
        **doc,
        "merge_method": "ramplus_tl",
        "parameters": {"r": 0.5, "alpha": 0.4, "epsilon": 1e-3},
    }


def _ramplus_tl_clamped(p: list[str]) -> dict[str, Any]:
    # a larger alpha: lambda follows the overlap ratio rho on more tensors instead of the clamp
    doc = _ram(p)
    return {
        **doc,
        "merge_method": "ramplus_tl",
        "parameters": {"r": 1.0, "alpha": 5.0, "epsilon": 2e-3},
    }


CASES: list[Case] = [
    Case("linear", _linear),
    Case("linear_gradient", _linear_gradient),
    Case("slerp", _slerp, n_models=2),
    Case("nuslerp", _nuslerp, n_models=2),
    Case("nuslerp_base", _nuslerp_base),
    Case("task_arithmetic", _task_arithmetic),
    Case("ties", _ties, cut=TopKCut("magnitude", TIES_DENSITIES)),
    Case("breadcrumbs", _breadcrumbs, cut=TopKCut("outliers", BREADCRUMBS_DENSITIES)),
    Case("model_stock", _model_stock),
    Case("passthrough", _passthrough, layers_out=8),
    Case("gpt2_slerp", _gpt2_slerp, arch="gpt2", n_models=2),
    # Weights on a 2**-14 grid: many equal |d| at the cut-offs, as in bf16 fine-tunes.
    Case("ties_grid", _ties, family={"grid": 14}, cut=TopKCut("magnitude", TIES_DENSITIES)),
    Case(
        "breadcrumbs_grid",
        _breadcrumbs,
        family={"grid": 14},
        cut=TopKCut("outliers", BREADCRUMBS_DENSITIES),
    ),
    # Qwen2 has q/k/v biases: 1-D tensors through the top-k path.
    Case("ties_qwen2", _ties_qwen2, arch="qwen2", cut=TopKCut("magnitude", TIES_DENSITIES)),
    Case("multislerp", _multislerp),
    Case("multislerp_base", _multislerp_base),
    # Fine-tunes 5% away from the base are ~0.05 rad apart: the Karcher mean is then within
    # 1e-5 of the normalised average, and the iteration only shows on models farther apart.
    Case("karcher_far", _karcher, family={"noise": 0.5}),
    Case("karcher_base_far", _karcher_base, family={"noise": 0.5}),
    Case("karcher_one_step_far", _karcher_one_step, family={"noise": 0.5}),
    Case("multislerp_far", _multislerp, family={"noise": 0.5}),
    Case("sce", _sce),
    Case("sce_gradient", _sce_gradient),
    Case("sce_qwen2", _sce, arch="qwen2"),
    # on a 2**-18 grid task vectors often share a variance: ties at the top-k cut-off (which of
    # them is kept also moves the energy weights, by ~1e-6 here)
    Case("sce_grid", _sce, family={"grid": 18}, cut=TopKCut("variance", (0.5,))),
    Case("nearswap", _nearswap, n_models=2),
    Case("nearswap_gradient", _nearswap_gradient, n_models=2),
    Case("arcee_fusion", _arcee_fusion, n_models=2),
    Case("arcee_fusion_swapped", _arcee_fusion_swapped, n_models=2),
    Case("arcee_fusion_qwen2", _arcee_fusion, arch="qwen2", n_models=2),
    # 16400 x 64 embeddings: over 1e6 elements, where mergekit samples the threshold
    Case(
        "arcee_fusion_sampled",
        _arcee_fusion,
        n_models=2,
        family={"vocab_size": 16400},
        max_flipped=1e-3,
    ),
    Case("ram", _ram),
    Case("ram_gradient", _ram_gradient),
    Case("ramplus_tl", _ramplus_tl),
    Case("ramplus_tl_clamped", _ramplus_tl_clamped),
    # mergekit 0.1.5 cannot merge GPT-NeoX checkpoints saved by transformers 5: its architecture
    # file requires the attention.bias/masked_bias buffers, which are no longer saved.
]
CASES_BY_NAME = {case.name: case for case in CASES}


def run_mergesearch(config: Path, out_dir: Path, in_process: bool = True) -> None:
    argv = ["merge", str(config), str(out_dir), "--threads", "1", "--no-progress"]
    if in_process:
        from mergesearch.search.cli import main

        code = main(argv)
        if code:
            raise RuntimeError(f"mergesearch {' '.join(argv)} exited {code}")
        return
    proc = subprocess.run(
        [sys.executable, "-m", "mergesearch", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mergesearch exited {proc.returncode}\n{proc.stderr[-4000:]}")


def build_family(case: Case, root: Path) -> list[Path]:
    """The case's input models, built once per (arch, size, overrides) under ``root``."""
    key = "_".join(
        [case.arch, str(case.n_models), *(f"{k}{v}" for k, v in sorted(case.family.items()))]
    )
    folder = root / key
    paths = [folder / f"model_{i}" for i in range(case.n_models)]
    if not all((p / "config.json").is_file() for p in paths):
        shutil.rmtree(folder, ignore_errors=True)
        paths = make_family(folder, case.arch, n_models=case.n_models, seed=0, **case.family)
    return paths


def write_config(case: Case, paths: list[Path], out: Path) -> Path:
    out.write_text(yaml.safe_dump(case.build([str(p) for p in paths]), sort_keys=False))
    return out


def run_case(
    case: Case, work: Path, mergekit: Path, models_root: Path | None = None, in_process: bool = True
) -> Comparison:
    """Build inputs, run both tools on the same YAML under ``work/case.name``, compare."""
    paths = build_family(case, models_root or work / "models")
    case_dir = work / case.name
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    config = write_config(case, paths, case_dir / "config.yaml")
    run_mergekit(mergekit, config, case_dir / "mergekit")
    run_mergesearch(config, case_dir / "ours", in_process=in_process)
    inputs = paths if case.cut else None  # base first, then config order
    switched = None
    if case.max_flipped is not None:
        doc = yaml.safe_load(config.read_text())
        others = [m["model"] for m in doc["models"] if m["model"] != doc["base_model"]]
        switched = (Path(doc["base_model"]), Path(others[0]))
    result = compare_outputs(
        case_dir / "ours",
        case_dir / "mergekit",
        case.name,
        case.method,
        inputs,
        case.cut,
        switched,
        case.max_flipped,
    )
    result.layers_expected = case.layers_out
    return result
