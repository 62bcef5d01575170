"""A cheap stand-in evaluator for search tests (``evaluator: python``, ``callable:
tests.helpers.probe:score``): scores a live model from its weights in microseconds.

The score peaks when the first MLP weight of the merged model is closest to ``TARGET_SCALE``
times its norm in ``base``... it only needs to differ between merges and be deterministic.
Tests steer it through module globals: ``SNAPSHOTS`` collects weights per call when
``CAPTURE`` is set; ``FAIL_ON_CALLS`` / ``INTERRUPT_ON_CALL`` make chosen calls raise.
"""

from __future__ import annotations

from typing import Any

import torch

from mergesearch.evaluators import EvalResult

CALLS: list[int] = []
SNAPSHOTS: list[dict[str, torch.Tensor]] = []
CAPTURE = False
FAIL_ON_CALLS: set[int] = set()
INTERRUPT_ON_CALL: int | None = None


def reset() -> None:
    global CAPTURE, INTERRUPT_ON_CALL
    CALLS.clear()
    SNAPSHOTS.clear()
    FAIL_ON_CALLS.clear()
    CAPTURE = False
    INTERRUPT_ON_CALL = None


def score(
    model: Any,
    tokenizer: Any,
    *,
    limit: int | None = None,
    per_item: bool = False,
    task: str = "probe",
) -> EvalResult:
    call = len(CALLS)
    CALLS.append(call)
    if INTERRUPT_ON_CALL is not None and call == INTERRUPT_ON_CALL:
        raise KeyboardInterrupt
    if call in FAIL_ON_CALLS:
        raise RuntimeError(f"probe exploded on call {call}")
    if CAPTURE:
        SNAPSHOTS.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    rows = model.model.layers[0].mlp.up_proj.weight.detach().float()
    per_row = torch.tanh(rows.sum(dim=1) * 3.0)  # one "item" per row
    # shrink items towards their mean: any prefix then ranks merges like the whole set does
    per_row = per_row.mean() + 0.01 * (per_row - per_row.mean())
    if limit is not None:
        per_row = per_row[:limit]
    items = [(i, float(v)) for i, v in enumerate(per_row)]
    return EvalResult(
        metrics={f"{task}/score": float(per_row.mean())},
        items={f"{task}/score": items} if per_item else {},
    )
