"""The registry, the perplexity evaluator and the python-callable evaluator."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from mergesearch import evaluators
from mergesearch.evaluators import EvalResult, EvaluatorError

TEXT = "Q: reverse abc A: cba\nQ: upper dog A: DOG\nQ: copy fish A: fish\n" * 3


def test_unknown_evaluator_is_one_line_listing_the_known():
    with pytest.raises(
        EvaluatorError, match=r"unknown evaluator 'nope'.*lm_eval.*perplexity.*python"
    ):
        evaluators.get("nope")


def test_unknown_option_is_an_evaluator_error(tmp_path):
    with pytest.raises(EvaluatorError, match=r"'perplexity'.*colour"):
        evaluators.get("perplexity", path=tmp_path / "x.txt", colour="blue")


@torch.no_grad()
def _direct_perplexity(model, tokenizer, text: str) -> float:
    ids = torch.tensor(
        [[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]]
    )
    logprobs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
    nll = -logprobs.gather(-1, ids[0, 1:, None]).sum()
    return math.exp(nll.item() / (ids.shape[1] - 1))


def test_perplexity_equals_direct_computation(tmp_path, model, tokenizer):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    ev = evaluators.get("perplexity", path=path, max_length=64, stride=63)
    result = ev.evaluate(model, tokenizer)
    n_tokens = len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert n_tokens > 64  # several windows
    assert ev.direction("text/perplexity") == "minimize"
    # each token is scored exactly once, however the windows fall
    assert sum(n for _, n in ev._windows_for(model, tokenizer)) == n_tokens
    one_window = evaluators.get("perplexity", path=path, max_length=n_tokens + 1, stride=n_tokens)
    assert one_window.evaluate(model, tokenizer).metrics["text/perplexity"] == pytest.approx(
        _direct_perplexity(model, tokenizer, TEXT), rel=1e-5
    )
    assert result.metrics["text/perplexity"] > 1


def test_perplexity_missing_file(tmp_path):
    with pytest.raises(EvaluatorError, match="not found"):
        evaluators.get("perplexity", path=tmp_path / "missing.txt")


def length_score(model, tokenizer, *, limit=None, scale=1.0):
    return {"params": scale * sum(p.numel() for p in model.parameters()), "limit": limit or 0}


def itemised(model, tokenizer, *, per_item=False):
    return EvalResult(metrics={"m": 0.5}, items={"m": [(0, 0.0), (1, 1.0)]} if per_item else {})


def test_python_callable(model, tokenizer):
    module = sys.modules[__name__].__name__
    ev = evaluators.get(
        "python",
        callable=f"{module}:length_score",
        options={"scale": 2.0},
        directions={"params": "minimize"},
    )
    result = ev.evaluate(model, tokenizer, limit=3)
    assert result.metrics == {
        "params": 2.0 * sum(p.numel() for p in model.parameters()),
        "limit": 3.0,
    }
    assert ev.direction("params") == "minimize"
    assert ev.direction("limit") == "maximize"
    items = evaluators.get("python", callable=f"{module}:itemised").evaluate(
        model, tokenizer, per_item=True
    )
    assert items.items == {"m": [(0, 0.0), (1, 1.0)]}


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("no_colon", "package.module:function"),
        ("no_such_module_xyz:f", "cannot import"),
        ("json:no_such_function", "has no"),
    ],
)
def test_python_callable_bad_target(target, match):
    with pytest.raises(EvaluatorError, match=match):
        evaluators.get("python", callable=target)
