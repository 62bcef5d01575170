"""The task-arithmetic family: one algorithm, parameterised by a sparsifier and a consensus.

    d_i = x_i - b                           task vectors
    d_i = sparsify(d_i)                     per model, with its own density (and rescale)
    D_i = w_i d_i
    consensus:  M_i = sign(D_i) == sign(sum D)    mixed = sum M_i D_i    divisor = sum M_i w_i
    otherwise:  mixed = sum D_i                                        divisor = sum w_i
    result = b + lambda * (mixed / divisor if normalize else mixed)

Every YAML name below is that function with a different (sparsifier, consensus, defaults).

Steps 2 and 3 look at a whole ``d_i`` (a top-k cut, an L1 norm, the random draws), everything
after is elementwise. So the sparsifiers first turn each ``d_i`` into a keep rule and a scale
(whole-tensor passes that hold no tensor of the input's size but a bool mask), then the rest runs
over cache-sized blocks, recomputing ``x_i - b`` per block: a dozen elementwise steps then read
memory once instead of a dozen times, and no temporary is larger than a block.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch

from mergesearch.merging import buffers, derived
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import compiled, fused
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import sparsifiers as SP
from mergesearch.merging.methods.base import REQUIRED, BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.methods.selection import BLOCK, blocks


def _l1_rescale_factors(deltas: list[SP.Delta], rules: list[SP.KeepRule | None]) -> list[float]:
    """``||d_i||_1 / ||kept d_i||_1`` per model (1 without a rule, or when either norm is
    below ``RESCALE_EPS``), from the sums a rule's own pass took or one pass over the blocks
    for every model at once (each base block read once), summed in float64."""
    sums = np.zeros((len(deltas), 2))
    todo = []
    for i, rule in enumerate(rules):
        known = rule.l1 if isinstance(rule, SP.Stored) else None
        if known is not None:
            sums[i] = known
        elif rule is not None:
            todo.append(i)
    if todo:
        b = deltas[0].b
        pending = np.zeros((len(todo), 2))
        fast = compiled.applies_to(b, *(deltas[i].x for i in todo))
        for sl in blocks(b.numel()):
            if fast:
                keeps = [rules[i].block_keep(deltas[i], sl) for i in todo]  # type: ignore[union-attr]
                fused.l1_sums(b[sl], [deltas[i].x[sl] for i in todo], keeps, pending)
                continue
            for row, i in enumerate(todo):
                scores = deltas[i].scores(sl)
                pending[row, 0] += float(scores.sum(dtype=torch.float64))
                kept = P.keep_only(scores, rules[i].mask(scores, sl))  # type: ignore[union-attr]
                pending[row, 1] += float(kept.sum(dtype=torch.float64))
        sums[todo] = pending
    return [
        1.0 if rule is None or before < P.RESCALE_EPS or after < P.RESCALE_EPS else before / after
        for rule, (before, after) in zip(rules, sums.tolist(), strict=True)
    ]


def _weighted_block(
    delta: SP.Delta, rule: SP.KeepRule | None, factor: float, weight: float, sl: slice
) -> torch.Tensor:
    """``D_i`` of one block: kept entries of ``d_i``, rescaled, times the weight."""
    d = delta.block(sl).to(P.accumulation_dtype(delta.b.dtype))
    if rule is not None:
        d = rule.apply(d, sl)
        if factor != 1.0:
            d.mul_(factor)
    return d.mul_(weight)


def _divisor_floor(weights: list[float], dtype: torch.dtype) -> float | None:
    """The smallest weight as ``dtype`` holds it, when every weight is positive; else None.

    Then a consensus divisor is 0 exactly where no model agrees (and ``mixed`` is 0 there),
    and otherwise at least this floor: clamping at it changes only the zeros (0 / w = 0).
    Computed once per tensor, not per block.
    """
    if not weights or min(weights) <= 0:
        return None
    return min(torch.tensor([P.float32_scalar(w) for w in weights], dtype=dtype).tolist())


def _consensus_block(
    weighted: list[torch.Tensor],
    weights: list[float],
    with_divisor: bool,
    ones: torch.Tensor,
    floor: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``mixed = sum M_i D_i`` and ``divisor = sum M_i w_i`` (0 made harmless) of one block.

    With the elected sign ``s = +-1`` (``+1`` where ``sum D >= 0``), ``D_i`` agrees exactly
    when ``s D_i > 0``. Clamping ``s D_i`` at 0 keeps ``|D_i|`` of the agreeing entries, their
    sum times ``s`` is ``mixed`` (bit for bit: all agreeing terms share one sign), and
    ``sign(clamped)`` is the 0/1 agreement that weights the divisor. Zeros never agree. Only
    float arithmetic, and as few passes as the algebra allows: on CPU this block is most of a
    TIES merge's time, and bool masks cost several times more per element than float ops.
    ``ones``: a block of 1.0 to take signs from (no fill per block); ``floor``: see
    ``_divisor_floor`` (None: zeros of the divisor become 1).
    """
    sign = P.elected_sign(weighted, ones)  # a new tensor: the loop below changes each D_i
    mixed = divisor = None
    last = len(weighted) - 1
    for i, (d, w) in enumerate(zip(weighted, weights, strict=True)):
        agreeing = d.mul_(sign).clamp_(min=0)  # d is ours: made by _weighted_block
        mixed = agreeing if mixed is None else mixed.add_(agreeing)
        if with_divisor:  # the 0/1 agreement, in place once agreeing is no longer needed
            agrees = agreeing.sign_() if i == last and i > 0 else torch.sign(agreeing)
            weight = P.float32_scalar(w)
            divisor = agrees.mul_(weight) if divisor is None else divisor.add_(agrees, alpha=weight)
    assert mixed is not None
    mixed.mul_(sign)
    if divisor is not None:
        if floor is not None:
            divisor.clamp_(min=floor)
        else:
            divisor.masked_fill_(divisor == 0, 1)
    return mixed, divisor


def generalized_task_arithmetic(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
    *,
    sparsifier: SP.Sparsifier | None,
    consensus: bool,
) -> torch.Tensor:
    if base is None:
        raise ConfigError("the task-arithmetic family needs base_model: deltas are x_i - base")
    if not inputs:
        return base
    weights = [float(p["weight"]) for p in per_model]
    b = base.detach().reshape(-1)
    deltas = [
        SP.Delta(x.detach().reshape(-1), b, tuple(base.shape), derived.identity(i))
        for i, x in enumerate(inputs)
    ]

    # whole-tensor steps, model by model in config order (the order random draws happen in)
    rules: list[SP.KeepRule | None] = []
    for delta, p in zip(deltas, per_model, strict=True):
        rule = None
        if sparsifier is not None and float(p["density"]) < 1:
            rule = sparsifier(delta, p, generator)
        rules.append(rule)
    factors = [1.0] * len(deltas)
    if params["rescale"]:
        factors = _l1_rescale_factors(deltas, rules)

    total = sum(weights)
    plain_divisor = total if abs(total) >= 1e-8 else 1.0
    lam = float(params["lambda"])
    out = buffers.empty_like(b, reuse=b)  # each b[sl] is read before out[sl] is written
    compute = P.accumulation_dtype(b.dtype)
    ones = torch.ones(min(b.numel(), BLOCK), dtype=compute) if consensus else None
    floor = _divisor_floor(weights, compute)
    if compiled.applies_to(b, out, *(d.x for d in deltas)):
        flags = (consensus, bool(params["normalize"]), floor, plain_divisor, lam)
        weights32 = [P.float32_scalar(w) for w in weights]
        for sl in blocks(b.numel()):
            keeps = [
                fused.BlockKeep() if rule is None else rule.block_keep(delta, sl)
                for delta, rule in zip(deltas, rules, strict=True)
            ]
            models = [delta.x[sl] for delta in deltas]
            fused.task_block(b[sl], models, keeps, factors, weights32, flags, out[sl])
        return out.reshape(base.shape)
    for sl in blocks(b.numel()):
        weighted = [
            _weighted_block(delta, rule, factor, w, sl)
            for delta, rule, factor, w in zip(deltas, rules, factors, weights, strict=True)
        ]
        if ones is not None:  # consensus
            mixed, divisor = _consensus_block(
                weighted, weights, bool(params["normalize"]), ones, floor
            )
        else:
            mixed = weighted[0]
            for d in weighted[1:]:
                mixed += d
            divisor = plain_divisor
        if params["normalize"]:
            mixed /= divisor
        if lam != 1.0:
            mixed *= lam
        if compute == b.dtype:
            torch.add(b[sl], mixed, out=out[sl])
        else:  # two passes beat one add that rounds into a 16-bit out
            out[sl].copy_(mixed.add_(b[sl]))
    return out.reshape(base.shape)


# per-model parameters a sparsifier reads besides density, with their defaults
_SPARSIFIER_PARAMS: dict[SP.Sparsifier, dict[str, float]] = {
    SP.breadcrumbs: {"gamma": 0.01},
    SP.della: {"epsilon": 0.15},
}


class _Variant(NamedTuple):
    """What sets one YAML name of the family apart."""

    sparsifier: SP.Sparsifier | None
    consensus: bool  # signs elected
    normalize: bool  # default of ``normalize``
    rescale: bool  # default of ``rescale``
    paper: str


def _register(name: str, variant: _Variant) -> None:
    """One YAML name of the family: the generalized function with the variant's sparsifier
    and consensus, and the per-model parameters that sparsifier reads."""
    sparsifier = variant.sparsifier
    extra_per_model = _SPARSIFIER_PARAMS.get(sparsifier, {}) if sparsifier is not None else {}
    register(
        MergeMethod(
            name=name,
            fn=partial(
                generalized_task_arithmetic, sparsifier=sparsifier, consensus=variant.consensus
            ),
            base=BaseRole.REQUIRED,
            per_model_params={"weight": REQUIRED, "density": 1.0, **extra_per_model},
            global_params={
                "normalize": variant.normalize,
                "rescale": variant.rescale,
                "lambda": 1.0,
                "int8_mask": False,  # accepted for mergekit compatibility; masks here are bool
            },
            min_inputs=0,  # with no other model the result is the base, as in mergekit
            uses_randomness=sparsifier in (SP.random, SP.della),
            elementwise=sparsifier is None and not variant.consensus,
            flat_blocks=True,
            result_in_base=True,
            description=_DESCRIPTIONS[name],
            paper=variant.paper,
        )
    )


TASK_ARITHMETIC = "https://arxiv.org/abs/2212.04089"
TIES = "https://arxiv.org/abs/2306.01708"
DARE = "https://arxiv.org/abs/2311.03099"
BREADCRUMBS = "https://arxiv.org/abs/2312.06795"
DELLA = "https://arxiv.org/abs/2406.11617"

# task_arithmetic accepts density (and rescale) like mergekit but has no sparsifier to use them.
_VARIANTS = {  # name: sparsifier, consensus, normalize, rescale, paper
    "task_arithmetic": _Variant(None, False, False, False, TASK_ARITHMETIC),
    "ties": _Variant(SP.magnitude, True, True, False, TIES),
    "dare_linear": _Variant(SP.random, False, False, True, DARE),
    "dare_ties": _Variant(SP.random, True, False, True, DARE),
    "breadcrumbs": _Variant(SP.breadcrumbs, False, False, False, BREADCRUMBS),
    "breadcrumbs_ties": _Variant(SP.breadcrumbs, True, False, False, BREADCRUMBS),
    "della": _Variant(SP.della, True, True, True, DELLA),
    "della_linear": _Variant(SP.della, False, False, True, DELLA),
}
_DESCRIPTIONS = {
    "task_arithmetic": "the base plus a weighted sum of task vectors (model minus base)",
    "ties": (
        "task vectors trimmed by magnitude, signs elected, their disjoint mean added to the "
        "base (TIES)"
    ),
    "dare_linear": "task vectors randomly dropped and L1-rescaled, then summed (DARE)",
    "dare_ties": "task vectors randomly dropped and rescaled, then TIES sign election (DARE-TIES)",
    "breadcrumbs": "task vectors without their smallest and largest entries (Model Breadcrumbs)",
    "breadcrumbs_ties": "Model Breadcrumbs with TIES sign election",
    "della": (
        "task vectors dropped at random with probabilities ranked by magnitude, rescaled, "
        "then TIES sign election (DELLA)"
    ),
    "della_linear": "DELLA's magnitude-ranked random drop and rescale, without sign election",
}
for _name, _variant in _VARIANTS.items():
    _register(_name, _variant)
