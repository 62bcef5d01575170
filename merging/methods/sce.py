"""SCE (FuseChat): select the task-vector elements the models disagree on most, calculate
per-model weights from the selected energy, erase minority signs, average the rest.

    d_i = x_i - b                                       task vectors (no models: b)
    select (select_topk < 1):
        var = population variance over the models of d_i, per element
        k = floor(select_topk * count(var != 0)); keep the k largest var (k = 0: keep none)
        d_i = d_i * keep                                select_topk <= 0 keeps none, >= 1 all
    calculate: e_i = mean(d_i^2) over the tensor
        w_i = e_i / sum e   (sum e < 1e-6: w_i = 1 / N)
    erase: s = +1 where sum_i d_i >= 0, else -1;  M_i = sign(d_i) == s  (zeros never agree)
    result = b + sum_i w_i M_i d_i / max(sum_i w_i M_i, 1e-6)

The selection is an exact top-k of a score that is never held whole (``selection``): the
variance is recomputed per block. Equal variances at the cut-off go lowest index first.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch

from mergesearch.merging import buffers
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import compiled, fused_sce
from mergesearch.merging.methods import primitives as P
from mergesearch.merging.methods import sparsifiers as SP
from mergesearch.merging.methods.base import BaseRole, MergeMethod, register
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.methods.selection import (
    BLOCK,
    TopK,
    blocks,
    select_top_k,
    select_top_share_of_nonzero,
)

WEIGHT_SUM_FLOOR = 1e-6  # below it the energies are noise: equal weights
DIVISOR_FLOOR = 1e-6


def _task_vectors(deltas: list[SP.Delta], sl: slice) -> list[torch.Tensor]:
    acc = P.accumulation_dtype(deltas[0].b.dtype)
    return [d.block(sl).to(acc) for d in deltas]


def variance(deltas: list[SP.Delta], sl: slice) -> torch.Tensor:
    """Per-element population variance over the models of the task vectors in ``sl``."""
    b = deltas[0].b
    if compiled.applies_to(b, *(d.x for d in deltas)):
        return fused_sce.variance_block(b[sl], [d.x[sl] for d in deltas])
    return P.population_variance(_task_vectors(deltas, sl))


def select(deltas: list[SP.Delta], select_topk: float) -> TopK | None:
    """The top-k-variance rule, or ``None`` when every element is kept."""
    if select_topk >= 1:
        return None
    n, b, models = deltas[0].numel, deltas[0].b, [d.x for d in deltas]
    source = partial(variance, deltas)
    if select_topk <= 0:
        return select_top_k(source, n, 0)
    fast = compiled.applies_to(b, *models)
    band_pass = partial(fused_sce.variance_band, b, models) if fast else None
    return select_top_share_of_nonzero(source, n, select_topk, band_pass)


def _selected_energies(
    deltas: list[SP.Delta], rule: TopK | None, keep: SP.Stored | None
) -> list[float]:
    """Each model's ``sum d_i ** 2`` over the selected elements (all without a rule), in
    float64; the selection is stored in ``keep`` on the way."""
    b, n = deltas[0].b, deltas[0].numel
    if compiled.applies_to(b, *(d.x for d in deltas)):
        sums = np.zeros(len(deltas))
        for sl in blocks(n):  # blocks start at multiples of 8: each packs into whole bytes
            models = [d.x[sl] for d in deltas]
            chosen = fused_sce.selected_energy_block(b[sl], models, rule, sl.start, sums)
            if keep is not None:
                SP.pack(torch.from_numpy(chosen).view(torch.bool), keep.bits, sl.start)
        return sums.tolist()
    energy = [0.0] * len(deltas)
    for sl in blocks(n):
        if keep is not None and rule is not None:
            SP.pack(rule.mask(variance(deltas, sl), sl.start), keep.bits, sl.start)
        for i, d in enumerate(_task_vectors(deltas, sl)):
            if keep is not None:
                d = keep.apply(d, sl)
            energy[i] += float(d.mul(d).sum(dtype=torch.float64))
    return energy


def sce(
    inputs: list[torch.Tensor],
    base: torch.Tensor | None,
    per_model: list[dict[str, float]],
    params: Mapping[str, Any],
    generator: Draws | None,
) -> torch.Tensor:
    if base is None:
        raise ConfigError("sce needs base_model: task vectors are x_i - base")
    if not inputs:
        return base
    b = base.detach().reshape(-1)
    deltas = [SP.Delta(x.detach().reshape(-1), b, tuple(base.shape)) for x in inputs]
    n = b.numel()
    rule = select(deltas, float(params["select_topk"]))
    if rule is not None and rule.tie_limit == 0:  # keeps nothing: every d_i is zeroed
        return base

    # calculate: the selected energy of each task vector (the selection mask kept, as bits)
    keep = SP.Stored(torch.empty((n + 7) // 8, dtype=torch.uint8)) if rule is not None else None
    energy = [e / n for e in _selected_energies(deltas, rule, keep)]
    total = sum(energy)
    weights = (
        [1.0 / len(deltas)] * len(deltas)
        if abs(total) < WEIGHT_SUM_FLOOR
        else [e / total for e in energy]
    )

    # erase and average, block by block
    out = buffers.empty_like(b, reuse=b)  # each b[sl] is read before out[sl] is written
    if compiled.applies_to(b, out, *(d.x for d in deltas)):
        for sl in blocks(n):
            mask = keep.keep_bytes(sl) if keep is not None else None
            models = [d.x[sl] for d in deltas]
            fused_sce.sce_block(b[sl], models, mask, weights, DIVISOR_FLOOR, out[sl])
        return out.reshape(base.shape)
    ones = torch.ones(min(n, BLOCK), dtype=P.accumulation_dtype(b.dtype))
    for sl in blocks(n):
        ds = _task_vectors(deltas, sl)
        if keep is not None:
            ds = [keep.apply(d, sl) for d in ds]
        mixed, divisor = _erase_block(ds, weights, ones)
        torch.add(b[sl], mixed.div_(divisor.clamp_(min=DIVISOR_FLOOR)), out=out[sl])
    return out.reshape(base.shape)


def _erase_block(
    ds: list[torch.Tensor], weights: list[float], ones: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i w_i M_i d_i`` and ``sum_i w_i M_i`` of one block, in float ops (the ``ds`` are
    consumed).

    With ``s = +-1`` the elected sign, ``d_i`` agrees exactly where ``s d_i > 0``: clamping
    ``s d_i`` at 0 keeps ``|d_i|`` there and 0 elsewhere, its sign is ``M_i``, and the sum of
    the kept ``w_i |d_i|`` times ``s`` is the signed sum bit for bit (every agreeing term
    has sign ``s``). A ``torch.where`` of bool compares per model cost more than this whole
    block. ``s`` is ``+1`` where ``sum d >= 0`` (``primitives.elected_sign``).
    """
    sign = P.elected_sign(ds, ones)
    mixed = divisor = None
    for d, w in zip(ds, weights, strict=True):
        kept = d.mul_(sign).clamp_(min=0)  # |d_i| where d_i agrees, else 0
        agrees = torch.sign(kept)
        kept.mul_(w)
        mixed = kept if mixed is None else mixed.add_(kept)
        divisor = agrees.mul_(w) if divisor is None else divisor.add_(agrees, alpha=w)
    assert mixed is not None and divisor is not None
    return mixed.mul_(sign), divisor


register(
    MergeMethod(
        name="sce",
        fn=sce,
        base=BaseRole.REQUIRED,
        global_params={
            "select_topk": 1.0,
            "int8_mask": False,  # accepted for mergekit compatibility; masks here are bool
        },
        min_inputs=0,  # with no other model the result is the base, as in mergekit
        result_in_base=True,
        flat_blocks=True,  # task vectors and variances per block; the top-k samples by stride
        description="top-variance selection, energy weights and sign erase of task vectors (SCE)",
        paper="https://arxiv.org/abs/2408.07990",
    )
)
