"""The block-wise engine paths equal their whole-tensor definitions, and the cheap CLI start."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from mergesearch.merging.checkpoint import Checkpoint
from mergesearch.merging.config import load_merge_config
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import get_method
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import selection as S
from mergesearch.merging.methods.draws import Draws
from tests.helpers import reference as R


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rand_in_chunks_equals_one_draw():
    # the documented draw protocol survives drawing a tensor block by block
    whole = torch.rand(3 * S.BLOCK + 11, generator=gen(1))
    g = gen(1)
    parts = [torch.rand(n, generator=g) for n in (S.BLOCK, 7, 2 * S.BLOCK + 4)]
    assert torch.equal(whole, torch.cat(parts))


@pytest.mark.parametrize("k", [1, 12345, 2 * S.BLOCK + 3, 3 * S.BLOCK])
def test_top_k_rule_per_block_equals_the_whole_mask(k):
    values = torch.randint(0, 50, (3 * S.BLOCK + 5,), generator=gen(2)).float()  # many ties
    rule = S.select_top_k(values.__getitem__, values.numel(), k)
    blockwise = torch.cat([rule.mask(values[sl], sl.start) for sl in S.blocks(values.numel())])
    assert torch.equal(blockwise, R.topk_mask(values, k))
    assert int(blockwise.sum()) == k
    for sl in S.blocks(values.numel()):
        cut = rule.cut(sl.start, sl.stop - sl.start)
        if cut is not None:
            assert torch.equal(values[sl] > cut, rule.mask(values[sl], sl.start))


def test_stable_row_order_equals_a_stable_sort():
    rows = torch.randint(0, 9, (37, 300), generator=gen(3)).float().abs() / 3
    expected = torch.sort(rows, dim=1, stable=True).indices
    assert torch.equal(P.stable_row_order(rows), expected)
    assert torch.equal(P.stable_row_order(rows.to(torch.bfloat16)), expected)  # radix of bits
    assert torch.equal(P.stable_row_order(rows.to(torch.float16)), expected)


def test_stable_row_order_of_rows_wider_than_16_bits_of_column():
    """Past 65536 columns: float32 keys need the column's 17 bits, the 16-bit radix path none;
    both keep the stable order among the many ties."""
    rows = torch.randint(0, 5, (2, 70_000), generator=gen(4)).float() / 4
    expected = torch.sort(rows, dim=1, stable=True).indices
    assert torch.equal(P.stable_row_order(rows), expected)
    assert torch.equal(P.stable_row_order(rows.to(torch.bfloat16)), expected)


@pytest.mark.parametrize("name", ["ties", "breadcrumbs_ties", "dare_ties", "della"])
def test_large_tensor_methods_match_whole_tensor_masks(name):
    """Several blocks, with every sparsifier: equal to composing the whole-tensor primitives."""
    shape = (3 * S.BLOCK // 512 + 1, 512)
    base = torch.randn(shape, generator=gen(4))
    xs = [base + torch.randn(shape, generator=gen(5 + i)) * 0.1 for i in range(2)]
    per_model = [
        {"weight": 0.6, "density": 0.4, "gamma": 0.02, "epsilon": 0.1},
        {"weight": 0.5, "density": 0.7, "gamma": 0.01, "epsilon": 0.2},
    ]
    method = get_method(name)
    params = {k: v for k, v in method.global_params.items()}
    per_model = [
        {k: p[k] for k in ("weight", *method.per_model_params) if k in p} for p in per_model
    ]
    out = method.fn(xs, base, per_model, params, Draws(9))

    g = Draws(9)
    weighted = []
    for x, p in zip(xs, per_model, strict=True):
        d = x - base
        if name == "ties":
            mask = R.magnitude_mask(d, p["density"])
        elif name == "breadcrumbs_ties":
            mask = R.breadcrumbs_mask(d, p["density"], p["gamma"])
        elif name == "dare_ties":
            mask = R.random_mask(d, p["density"], g)
        else:
            mask = R.della_mask(d, p["density"], p["epsilon"], g)
        weighted.append(R.apply_mask(d, mask, params["rescale"]) * p["weight"])
    agree = R.sign_consensus(weighted)
    mixed = sum(d * m for d, m in zip(weighted, agree, strict=True))
    if params["normalize"]:
        divisor = sum(m.float() * p["weight"] for m, p in zip(agree, per_model, strict=True))
        mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    expected = base + mixed
    # rescale sums run per block: allow float32 rounding, and the rare sign flip it causes
    close = torch.isclose(out, expected, rtol=0, atol=1e-5)
    assert close.float().mean() > 1 - 1e-5


def test_corrupt_safetensors_offsets_are_config_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 1}')
    raw = bytearray((tmp_path / "model.safetensors").read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + header_len].decode().replace('"shape":[4,4]', '"shape":[4,5]')
    raw[8 : 8 + header_len] = header.encode()
    (tmp_path / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="corrupted"):
        Checkpoint(tmp_path)


def test_checkpoint_reads_exact_tensors(tmp_path):
    from safetensors.torch import save_file

    tensors = {
        "a": torch.randn(3, 5, generator=gen(6)),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(4, generator=gen(7)).to(torch.bfloat16),
        "empty": torch.zeros(0, 3),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 1}')
    ckpt = Checkpoint(tmp_path)
    for name, tensor in tensors.items():
        assert torch.equal(ckpt.get(name), tensor), name
    ckpt.close()


def test_seed_is_emitted_by_to_dict():
    config = load_merge_config(
        {"merge_method": "dare_ties", "base_model": "a", "models": [{"model": "b"}], "seed": 3}
    )
    assert config.to_dict()["seed"] == 3
    assert "seed: 3" in config.to_yaml()


def test_plan_cache_is_bounded(monkeypatch):
    from mergesearch.merging import engine

    merger = engine.Merger()
    built = []
    monkeypatch.setattr(
        engine._Planner, "build", lambda self: built.append(self.config) or len(built)
    )
    for i in range(engine.PLAN_CACHE_SIZE + 5):
        merger.plan({"merge_method": "linear", "models": [{"model": f"m{i}"}]})
    assert len(merger._plans) == engine.PLAN_CACHE_SIZE


def test_merge_command_does_not_import_other_commands():
    code = (
        "import sys; from mergesearch.search.cli import build_parser; build_parser('merge'); "
        "print(sorted(m for m in ('optuna', 'sqlalchemy', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kth_largest_counts_are_consistent():
    scores = torch.randint(0, 1000, (S.SAMPLE_MIN_NUMEL + 9,), generator=gen(8)).float()
    k = math.floor(0.3 * scores.numel())
    value, above, equal = S.kth_largest(scores.__getitem__, scores.numel(), k)
    assert above == int((scores > value).sum()) and equal == int((scores == value).sum())
    assert above < k <= above + equal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_kth_largest_band_pass_in_every_score_dtype(dtype):
    """float32/64 scores go to NumPy as they are, 16-bit ones upcast: the same exact answer."""
    scores = (torch.rand(3 * S.SAMPLE_MIN_NUMEL, generator=gen(9)) * 4).to(dtype)
    ordered = torch.sort(scores.double(), descending=True).values
    for k in (1, 777, scores.numel() // 2, scores.numel()):
        value, above, equal = S.kth_largest(scores.__getitem__, scores.numel(), k)
        assert value == float(ordered[k - 1])
        assert above == int((scores > value).sum()) and equal == int((scores == value).sum())


def _scores(kind: str) -> torch.Tensor:
    n = S.SAMPLE_MIN_NUMEL + 11
    if kind == "continuous":  # a third exactly zero (sce: models that agree)
        scores = torch.rand(n, generator=gen(40))
        scores[torch.rand(n, generator=gen(41)) < 1 / 3] = 0.0
    elif kind == "ties":  # a coarse grid: the cut falls inside a run of equal scores
        scores = torch.randint(0, 50, (n,), generator=gen(42)).float()
    else:  # "misleading": every sample point is 0, so the sample sees no nonzero score
        scores = torch.rand(n, generator=gen(43)) + 1.0
        scores[:: n // S.SAMPLE_SIZE] = 0.0
    return scores


@pytest.mark.parametrize("kind", ["continuous", "ties", "misleading"])
@pytest.mark.parametrize("share", [0.01, 0.5, 0.97])
def test_top_share_of_nonzero_counts_and_selects_in_one_pass(kind, share):
    """sce's rule: the top floor(share * nonzero) scores, the same rule (tie limit included) as
    counting first and selecting after, with one pass over the scores where the sample
    brackets the answer, a second only where it misleads, and the tie scan where the cut
    falls inside equal scores."""
    scores = _scores(kind)
    n = scores.numel()
    passes = []

    def source(sl: slice) -> torch.Tensor:
        if sl == slice(0, S.BLOCK):
            passes.append(sl)
        return scores[sl]

    rule = S.select_top_share_of_nonzero(source, n, share)
    k = int(int(torch.count_nonzero(scores)) * share)
    assert rule == S.select_top_k(scores.__getitem__, n, k)
    assert int(rule.mask(scores).sum()) == k
    tie_scan = rule.tie_limit < n  # the cut falls inside equal scores: find where it ends
    assert len(passes) == 1 + (kind == "misleading") + tie_scan
    assert tie_scan == (kind == "ties")


def test_della_mask_carries_the_l1_sums_its_pass_took():
    """DELLA sums |d| and the kept |d| while it draws: the rescale factor from those sums
    equals the one a separate pass over the mask finds, up to float32 block rounding."""
    from mergesearch.merging.methods import sparsifiers as SP
    from mergesearch.merging.methods.task_arithmetic import _l1_rescale_factors

    shape = (2 * S.BLOCK // 700 + 3, 700)  # rows of 700: DELLA's blocks are not BLOCK-sized
    b = torch.randn(shape, generator=gen(6)).to(torch.bfloat16).reshape(-1)
    x = (b.float() + torch.randn(shape, generator=gen(7)).reshape(-1) * 0.05).to(torch.bfloat16)
    delta = SP.Delta(x, b, shape)
    rule = SP.della(delta, {"density": 0.3, "epsilon": 0.1}, Draws(2))
    assert rule.l1 is not None
    (passed,) = _l1_rescale_factors([delta], [SP.Stored(rule.bits)])  # no sums: a pass
    assert passed != 1.0
    assert _l1_rescale_factors([delta], [rule]) == [pytest.approx(passed, rel=1e-6)]


def test_several_ranks_from_one_pass_are_each_rank_alone():
    """arcee_fusion's three quartiles share one sample and one band pass: each answer, with
    its counts, is the one-rank answer and the sort's."""
    scores = torch.randint(0, 5000, (S.SAMPLE_MIN_NUMEL + 77,), generator=gen(12)).float()
    n = scores.numel()
    ks = [n - (q * (n - 1)) // 4 for q in (1, 2, 3)] + [1, n]
    calls = []

    def source(sl: slice) -> torch.Tensor:
        calls.append(sl)
        return scores[sl]

    together = S.kth_largest_of_each(source, n, ks)
    full_passes = sum(1 for sl in calls if sl.step is None)
    assert full_passes == len(list(S.blocks(n)))  # one band pass, no whole-tensor fallback
    descending = torch.sort(scores, descending=True).values
    for k, kth in zip(ks, together, strict=True):
        assert kth == S.kth_largest(scores.__getitem__, n, k)
        assert kth[0] == float(descending[k - 1])
