"""mergesearch produces mergekit 0.1.x's tensors on the same YAML.

Each case in ``tests/helpers/parity.py`` builds tiny float32 checkpoints (a random base and
fine-tune-like perturbations of it), writes one YAML, runs it through ``mergekit-yaml`` (from
its own virtual environment) and through ``mergesearch merge``, and requires the same tensor
names, shapes and dtypes, the same ``num_hidden_layers`` and a max abs difference <= 1e-5.

Top-k ties (ties, breadcrumbs): when equal magnitudes of a task vector ``d = x - base`` straddle
the cut-off of its top-k (or breadcrumbs rank window), which of them is kept is arbitrary;
mergekit's choice follows torch's non-stable sort. Every later step (weighting, sign vote,
disjoint mean) is elementwise, so the choice only affects the tied positions themselves. The
harness recomputes ``d`` from the inputs, finds the cut-off values whose copies lie on both sides
of the cut, and leaves out every position where any model's ``|d|`` equals one of them (a
position whose sign vote depends on a tied model is thereby left out too). The ``*_grid`` cases
put all weights on a 2**-14 grid so such ties are common (~8-10% of elements left out); the
others have none. A case may not leave out more than a quarter of its elements.

Sampled thresholds (arcee_fusion): on tensors over 1e6 elements mergekit estimates the threshold
from a random sample and mergesearch computes it exactly, so a few elements take the base's
value in one output and the other model's in the other. ``arcee_fusion_sampled`` counts them
(``flip_mask``) and allows at most 0.1% of those tensors' elements; everything else, and every
smaller tensor, must match within 1e-5.

mergekit is found through ``$MERGEKIT_VENV`` (a venv with ``bin/mergekit-yaml``), else
``.venv-mergekit`` in the repository root. Without it the tests skip, except under ``CI=true``,
where they fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench._mergekit import MERGEKIT_ENV, TopKCut, find_mergekit, flip_mask, in_ci, tie_mask
from tests.helpers.parity import CASES, Case, run_case

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mergekit_exe() -> Path:
    exe = find_mergekit()
    if exe is None:
        message = (
            f"mergekit not found: set {MERGEKIT_ENV} to a venv with mergekit==0.1.5 "
            "(bin/mergekit-yaml), or create .venv-mergekit in the repository root"
        )
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return exe


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity_models")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_matches_mergekit(
    case: Case, mergekit_exe: Path, models_root: Path, tmp_path: Path, record_property
):
    result = run_case(case, tmp_path, mergekit_exe, models_root=models_root)
    # what bench/parity.py prints, read from pytest's JUnit XML report
    for key in ("method", "tensors", "elements", "excluded", "flipped", "sampled_elements"):
        record_property(key, getattr(result, key))
    record_property("max_abs_diff", f"{result.max_abs_diff:.2e}")
    assert result.ok, f"{case.name}: " + "; ".join(result.problems())
    assert result.tensors > 0
    assert result.excluded <= result.elements // 4, "tie exclusion hides too much to be a test"
    if case.cut is None:
        assert result.excluded == 0
    if case.max_flipped is None:
        assert result.flipped == 0


def test_flip_mask_marks_elements_that_took_the_other_input():
    base = torch.tensor([0.0, 1.0, 2.0, 3.0])
    other = torch.tensor([1.0, 1.0, 5.0, 4.0])
    ours = torch.tensor([0.0, 1.0, 5.0, 3.5])  # base, either, other, neither
    ref = torch.tensor([1.0, 1.0, 2.0, 3.0])  # other, either, base, base
    assert flip_mask(ours, ref, base, other).tolist() == [True, False, True, False]


def test_tie_mask_marks_only_values_straddling_the_cut():
    base = torch.zeros(8)
    # |d| sorted: 1 2 3 3 | 3 5 6 7 -> top-4 cut falls inside the three 3s: all three are tied.
    d1 = torch.tensor([3.0, 1, 3, 7, 2, 3, 6, 5])
    # |d| 1..8 distinct: nothing is ambiguous.
    d2 = torch.arange(1.0, 9.0)
    mask = tie_mask([base, d1, d2], TopKCut("magnitude", (0.5, 0.5)))
    assert mask.tolist() == [True, False, True, False, False, True, False, False]


def test_tie_mask_ignores_equal_values_that_do_not_straddle():
    base = torch.zeros(6)
    d = torch.tensor([-4.0, 4, 1, 2, 9, 8])  # top-3: 9 8 4 | 4 ... -> 4s straddle
    assert tie_mask([base, d], TopKCut("magnitude", (0.5,))).sum() == 2
    # top-2 (floor(0.34 * 6)): 9 8 | 4 4: the equal 4s lie on one side of the cut.
    assert not tie_mask([base, d], TopKCut("magnitude", (0.34,))).any()


def test_tie_mask_sce_marks_variances_straddling_the_cut():
    base = torch.zeros(6)
    # variances over the two models: (d0 - d1)^2 / 4 = 4 0 1 1 9 1; five are nonzero, so
    # select_topk 0.6 keeps int(5 * 0.6) = 3 of them: 9 4 1 | 1 1 -> the 1s straddle the cut
    d0 = torch.tensor([4.0, 1, 2, 0, 6, 3])
    d1 = torch.tensor([0.0, 1, 0, 2, 0, 1])
    mask = tie_mask([base, d0, d1], TopKCut("variance", (0.6,)))
    assert mask.tolist() == [False, False, True, True, False, True]
    # select_topk 0.4 keeps 2: 9 4 | 1 1 1 -> no tie at the cut
    assert not tie_mask([base, d0, d1], TopKCut("variance", (0.4,))).any()


def test_tie_mask_breadcrumbs_window_has_two_cuts():
    base = torch.zeros(10)
    # n=10, density 0.6 -> keep 6, gamma 0.1 -> top 1, bottom 3: kept ranks [3, 9).
    # sorted |d|: 1 2 5 5 6 7 8 9 9 9 -> lower cut splits the 5s, upper cut splits the 9s.
    d = torch.tensor([9.0, 5, 1, 9, 2, 5, 6, 7, 8, -9])
    mask = tie_mask([base, d], TopKCut("outliers", (0.6,), gamma=0.1))
    assert mask.tolist() == [True, True, False, True, False, True, False, False, False, True]
