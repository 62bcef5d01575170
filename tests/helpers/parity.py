"""Run one merge YAML through mergekit and through mergesearch; compare outputs tensor by tensor.

Shared by ``tests/merging/test_mergekit_parity.py`` (asserts) and ``bench/parity.py`` (prints a
table). mergekit is only ever *run*, as a program from its own virtual environment, found with
``find_mergekit``; nothing here imports it.

Top-k ties. TIES keeps the ``k`` largest ``|d|`` of each task vector and breadcrumbs keeps a rank
window of the sorted ``|d|``. When equal magnitudes straddle a cut-off, which of them survives is
arbitrary (mergekit: whatever torch's non-stable sort returns). Every later step of these
methods is elementwise (weighting, sign vote, disjoint mean), so such a choice only changes the
output at the tied positions themselves. ``tie_mask`` recomputes ``d = x - base`` from the
inputs, finds each cut-off value whose equal magnitudes straddle the cut (more candidates than
places), and marks every position where any model's ``|d|`` equals such a value. Those positions
are left out of the comparison and counted; everything else must match within tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from tests.helpers.tiny_models import make_family

REPO_ROOT = Path(__file__).resolve().parents[2]
MERGEKIT_ENV = "MERGEKIT_VENV"
DEFAULT_MERGEKIT_VENVS = (Path("/work/mk-venv"), REPO_ROOT / ".venv-mergekit")
TOLERANCE = 1e-5


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def find_mergekit() -> Path | None:
    """The ``mergekit-yaml`` executable: ``$MERGEKIT_VENV``, else the default venvs."""
    candidates = [Path(os.environ[MERGEKIT_ENV])] if os.environ.get(MERGEKIT_ENV) else []
    candidates += [] if candidates else list(DEFAULT_MERGEKIT_VENVS)
    for venv in candidates:
        exe = venv / "bin" / "mergekit-yaml"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class TopKCut:
    """How a case sparsifies each non-base task vector, to find ties at the cut-offs."""

    kind: str  # "magnitude" (ties) or "outliers" (breadcrumbs)
    densities: tuple[float, ...]  # one per non-base model, in config order
    gamma: float = 0.01


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[list[str]], dict[str, Any]]  # model paths -> YAML document
    arch: str = "llama"
    n_models: int = 3
    family: dict[str, Any] = field(default_factory=dict)  # tiny_models config overrides
    layers_out: int = 4
    cut: TopKCut | None = None

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
    # mergekit 0.1.5 cannot merge GPT-NeoX checkpoints saved by transformers 5: its architecture
    # file requires the attention.bias/masked_bias buffers, which are no longer saved.
]
CASES_BY_NAME = {case.name: case for case in CASES}


# ---------------------------------------------------------------------------------------------
# Ties at top-k cut-offs


def _straddling_values(magnitude: torch.Tensor, cut: TopKCut, density: float) -> list[float]:
    """Magnitudes at a cut-off whose equal copies lie on both sides of it."""
    flat = magnitude.reshape(-1)
    n = flat.numel()
    if density >= 1 or n == 0:
        return []
    keep = max(1, int(density * n))
    if cut.kind == "magnitude":
        boundaries = [n - keep]  # kept ascending ranks [n - keep, n)
    elif cut.kind == "outliers":
        top = int(cut.gamma * n)
        bottom = max(0, n - keep - top)
        boundaries = [bottom, bottom + keep]  # kept ascending ranks [bottom, bottom + keep)
    else:
        raise ValueError(f"unknown cut kind {cut.kind!r}")
    values = []
    for b in boundaries:
        if 0 < b < n:
            value = torch.kthvalue(flat, b + 1).values  # the magnitude at ascending rank b
            if int((flat < value).sum()) < b:  # rank b - 1 holds the same magnitude
                values.append(value.item())
    return values


def tie_mask(inputs: list[torch.Tensor], cut: TopKCut) -> torch.Tensor:
    """Positions whose merged value depends on how ties at a top-k cut-off were broken.

    ``inputs[0]`` is the base, ``inputs[1:]`` the other models in config order.
    """
    base = inputs[0].float()
    mask = torch.zeros(base.shape, dtype=torch.bool)
    for x, density in zip(inputs[1:], cut.densities, strict=True):
        magnitude = (x.float() - base).abs()
        for value in _straddling_values(magnitude, cut, density):
            mask |= magnitude == value
    return mask


# ---------------------------------------------------------------------------------------------
# Comparing two output directories


@dataclass
class Comparison:
    case: str
    method: str
    tensors: int = 0
    elements: int = 0
    excluded: int = 0
    tensors_with_ties: int = 0
    max_abs_diff: float = 0.0
    worst_tensor: str = ""
    missing: list[str] = field(default_factory=list)  # in mergekit's output, not ours
    extra: list[str] = field(default_factory=list)  # in ours, not mergekit's
    mismatched: list[str] = field(default_factory=list)  # shape or dtype differs
    layers_ours: int | None = None
    layers_ref: int | None = None
    layers_expected: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"missing from ours: {self.missing[:5]}")
        if self.extra:
            out.append(f"not in mergekit's output: {self.extra[:5]}")
        if self.mismatched:
            out.append(f"shape/dtype differ: {self.mismatched[:5]}")
        if self.layers_ours != self.layers_ref or self.layers_ref != self.layers_expected:
            out.append(
                f"num_hidden_layers ours={self.layers_ours} mergekit={self.layers_ref} "
                f"expected={self.layers_expected}"
            )
        if not self.max_abs_diff <= TOLERANCE:  # also catches NaN
            out.append(f"max abs diff {self.max_abs_diff:.3g} at {self.worst_tensor}")
        return out


def num_layers(model_dir: Path) -> int | None:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in config:
            return int(config[key])
    return None


class LazyCheckpoint:
    """Tensors of a safetensors checkpoint (sharded or not), read one at a time."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        self._handles = [
            safe_open(f, framework="pt") for f in sorted(Path(model_dir).glob("*.safetensors"))
        ]
        self._where = {name: h for h in self._handles for name in h.keys()}  # noqa: SIM118

    def names(self) -> set[str]:
        return set(self._where)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)


def compare_outputs(
    ours_dir: Path,
    ref_dir: Path,
    case: str = "",
    method: str = "",
    inputs: list[Path] | None = None,
    cut: TopKCut | None = None,
) -> Comparison:
    """Compare every tensor of ``ours_dir`` with ``ref_dir`` (mergekit's output), one at a time.

    With ``cut`` (and ``inputs``, base first) positions tied at a top-k cut-off are skipped.
    """
    ours, ref = LazyCheckpoint(ours_dir), LazyCheckpoint(ref_dir)
    result = Comparison(case=case, method=method)
    result.missing = sorted(ref.names() - ours.names())
    result.extra = sorted(ours.names() - ref.names())
    result.layers_ours, result.layers_ref = num_layers(ours_dir), num_layers(ref_dir)
    input_states = [LazyCheckpoint(p) for p in inputs] if cut and inputs else []
    for name in sorted(ref.names() & ours.names()):
        a, b = ours[name], ref[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            result.mismatched.append(
                f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
            )
            continue
        diff = (a.double() - b.double()).abs()
        if input_states:
            mask = tie_mask([s[name] for s in input_states], cut)
            if mask.any():
                result.tensors_with_ties += 1
                result.excluded += int(mask.sum())
                diff = diff.masked_fill(mask, 0.0)
        result.tensors += 1
        result.elements += a.numel()
        worst = diff.max().item() if diff.numel() else 0.0
        if not worst <= result.max_abs_diff:  # NaN propagates as the worst
            result.max_abs_diff, result.worst_tensor = worst, name
    return result


# ---------------------------------------------------------------------------------------------
# Running the two tools


def _offline_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # mergekit's venv must not see the project's packages
    return env


def run_mergekit(exe: Path, config: Path, out_dir: Path, extra: list[str] | None = None) -> None:
    cmd = [str(exe), str(config), str(out_dir), "--copy-tokenizer", "--quiet"]
    cmd += ["--no-write-model-card", "--random-seed", "0", *(extra or [])]
    proc = subprocess.run(cmd, env=_offline_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(
            f"mergekit failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}"
        )


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
    result = compare_outputs(
        case_dir / "ours", case_dir / "mergekit", case.name, case.method, inputs, case.cut
    )
    result.layers_expected = case.layers_out
    return result
