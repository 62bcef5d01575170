"""Run mergekit 0.1.x as a program and compare its output with another model folder.

The reference harness behind ``bench/merge_speed.py`` and the parity cases of
``tests/helpers/parity.py``. mergekit is only ever *run*, from its own virtual environment
(``$MERGEKIT_VENV``, else ``.venv-mergekit`` in the repository root); nothing here imports it.

Top-k ties. TIES keeps the ``k`` largest ``|d|`` of each task vector and breadcrumbs keeps a rank
window of the sorted ``|d|``; sce keeps the largest variances over the models of ``d``. When
equal magnitudes (variances) straddle a cut-off, which of them survives is arbitrary (mergekit:
whatever torch's non-stable sort returns). Every later step of ties and breadcrumbs is
elementwise (weighting, sign vote, disjoint mean), so such a choice only changes the output at
the tied positions themselves; sce's energy weights sum over the tensor, so there it also moves
every element slightly, well within tolerance. ``tie_mask`` recomputes ``d = x - base`` from the
inputs, finds each cut-off value whose equal copies straddle the cut (more candidates than
places), and marks every position where any model's ``|d|`` (the variance) equals such a value.
Those positions are left out of the comparison and counted; everything else must match within
tolerance.

Sampled thresholds. On tensors of more than 1e6 elements mergekit's ``arcee_fusion`` estimates
its threshold from a random sample, mergesearch computes it exactly (a documented difference).
Each element of its output is either the base's or the other model's, so a slightly different
threshold makes a few elements take the other one. ``compare_outputs(..., switched=...)``
counts such elements on those tensors (``flip_mask``) instead of comparing them.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MERGEKIT_ENV = "MERGEKIT_VENV"
DEFAULT_MERGEKIT_VENV = REPO_ROOT / ".venv-mergekit"
TOLERANCE = 1e-5
SAMPLED_NUMEL = 1_000_000  # mergekit's arcee_fusion samples its threshold above this size


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def find_mergekit() -> Path | None:
    """The ``mergekit-yaml`` executable of ``$MERGEKIT_VENV``, else of ``.venv-mergekit``."""
    venv = Path(os.environ.get(MERGEKIT_ENV) or DEFAULT_MERGEKIT_VENV)
    exe = venv / "bin" / "mergekit-yaml"
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


@dataclass(frozen=True)
class TopKCut:
    """How a case sparsifies each non-base task vector, to find ties at the cut-offs."""

    kind: str  # "magnitude" (ties), "outliers" (breadcrumbs) or "variance" (sce)
    # one per non-base model, in config order; "variance": one, select_topk
    densities: tuple[float, ...]
    gamma: float = 0.01


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
    if cut.kind == "variance":
        return _variance_tie_mask([x.float() - base for x in inputs[1:]], cut.densities[0])
    mask = torch.zeros(base.shape, dtype=torch.bool)
    for x, density in zip(inputs[1:], cut.densities, strict=True):
        magnitude = (x.float() - base).abs()
        for value in _straddling_values(magnitude, cut, density):
            mask |= magnitude == value
    return mask


def _variance_tie_mask(deltas: list[torch.Tensor], select_topk: float) -> torch.Tensor:
    """sce: positions whose variance over the models equals a value that straddles its cut-off
    (the ``floor(select_topk * nonzero)`` largest variances are kept)."""
    var = torch.var(torch.stack(deltas), dim=0, unbiased=False)
    flat = var.reshape(-1)
    keep = int(int(torch.count_nonzero(flat)) * select_topk)
    boundary = flat.numel() - keep  # kept ascending ranks [boundary, n)
    if select_topk >= 1 or not 0 < boundary < flat.numel():
        return torch.zeros(var.shape, dtype=torch.bool)
    value = torch.kthvalue(flat, boundary + 1).values
    if int((flat < value).sum()) < boundary:
        return var == value
    return torch.zeros(var.shape, dtype=torch.bool)


def flip_mask(
    ours: torch.Tensor, ref: torch.Tensor, base: torch.Tensor, other: torch.Tensor
) -> torch.Tensor:
    """Positions where one output is the base's value and the other the other model's."""
    a, b, x, o = ours.double(), ref.double(), base.double(), other.double()

    def near(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u - v).abs() <= TOLERANCE

    apart = (a - b).abs() > TOLERANCE
    return apart & ((near(a, x) & near(b, o)) | (near(a, o) & near(b, x)))


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
    flipped: int = 0  # elements that took the other input than mergekit's (sampled tensors)
    sampled_elements: int = 0  # elements of tensors where mergekit samples a threshold
    max_flipped: float | None = None
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
        if self.flipped and (
            self.max_flipped is None or self.flipped > self.max_flipped * self.sampled_elements
        ):
            out.append(
                f"{self.flipped} of {self.sampled_elements} elements of sampled tensors took the "
                f"other input (allowed: {self.max_flipped or 0:g} of them)"
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
    switched: tuple[Path, Path] | None = None,
    max_flipped: float | None = None,
) -> Comparison:
    """Compare every tensor of ``ours_dir`` with ``ref_dir`` (mergekit's output), one at a time.

    With ``cut`` (and ``inputs``, base first) positions tied at a top-k cut-off are skipped.
    With ``switched`` (base, other: the two inputs of arcee_fusion), elements of tensors over
    ``SAMPLED_NUMEL`` that took the other input than mergekit's are counted, not compared.
    """
    ours, ref = LazyCheckpoint(ours_dir), LazyCheckpoint(ref_dir)
    result = Comparison(case=case, method=method, max_flipped=max_flipped)
    pair = [LazyCheckpoint(p) for p in switched] if switched else []
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
        if pair and a.numel() > SAMPLED_NUMEL:
            flips = flip_mask(a, b, pair[0][name], pair[1][name])
            result.sampled_elements += a.numel()
            result.flipped += int(flips.sum())
            diff = diff.masked_fill(flips, 0.0)
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
