"""Perplexity of a live model on a local text file, with a sliding window.

The text is tokenized once per tokenizer (that depends on no weight) and cut into windows of
``max_length`` tokens that advance by ``stride``; each window scores only the tokens the previous
window did not, so every token is scored once with up to ``max_length - stride`` tokens of
context. Windows are the items: ``limit`` and ``samples`` pick windows, ``per_item`` gives each
window's perplexity.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mergesearch.evaluators import runtime
from mergesearch.evaluators.base import Direction, EvalResult, Selection, TimedEvaluator, register
from mergesearch.evaluators.errors import EvaluatorError


@register("perplexity")
class PerplexityEvaluator(TimedEvaluator):
    """Metrics ``"<file stem>/perplexity"`` (per token) and ``"<file stem>/bits_per_byte"``."""

    name = "perplexity"

    def __init__(
        self,
        path: str | Path,
        *,
        max_length: int | None = None,
        stride: int | None = None,
        batch_size: int = 8,
        threads: int | None = None,
    ) -> None:
        runtime.configure(threads)
        self.path = Path(path)
        if not self.path.is_file():
            raise EvaluatorError(f"perplexity: text file {self.path} not found")
        self.text = self.path.read_text(encoding="utf-8")
        if not self.text.strip():
            raise EvaluatorError(f"perplexity: text file {self.path} is empty")
        self.task = self.path.stem
        self.max_length = max_length
        self.stride = stride
        self.batch_size = batch_size
        self._windows: dict[tuple[int, int, int], list[tuple[list[int], int]]] = {}

    def _score(self, model: Any, tokenizer: Any, selection: Selection) -> EvalResult:
        import torch

        windows = self._windows_for(model, tokenizer)
        limit, samples = selection.limit, selection.samples
        if samples is not None and limit is not None:
            raise EvaluatorError("perplexity: give limit or samples, not both")
        chosen = sorted(set(samples)) if samples is not None else list(range(len(windows)))
        if chosen and (chosen[-1] >= len(windows) or chosen[0] < 0):
            raise EvaluatorError(
                f"perplexity {self.task!r}: window index out of range (it has {len(windows)})"
            )
        chosen = chosen[:limit] if limit is not None else chosen
        torch.manual_seed(selection.seed)

        model.eval()
        per_window: dict[int, tuple[float, int]] = {}  # index -> (nll sum, scored tokens)
        by_length: dict[int, list[int]] = {}
        for i in chosen:
            by_length.setdefault(len(windows[i][0]), []).append(i)
        with torch.no_grad():
            for indices in by_length.values():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start : start + self.batch_size]
                    ids = torch.tensor([windows[i][0] for i in batch], device=model.device)
                    logprobs = torch.log_softmax(model(ids).logits[:, :-1].float(), dim=-1)
                    token_lp = logprobs.gather(-1, ids[:, 1:, None])[..., 0]
                    for row, i in enumerate(batch):
                        n_target = windows[i][1]
                        per_window[i] = (-token_lp[row, -n_target:].sum().item(), n_target)

        nll = sum(v[0] for v in per_window.values())
        tokens = sum(v[1] for v in per_window.values())
        n_bytes = sum(self._bytes_of(windows[i], tokenizer) for i in chosen)
        metrics = {
            f"{self.task}/perplexity": math.exp(nll / tokens),
            f"{self.task}/bits_per_byte": nll / math.log(2) / n_bytes,
        }
        items = {}
        if selection.per_item:
            items[f"{self.task}/perplexity"] = [
                (i, math.exp(per_window[i][0] / per_window[i][1])) for i in chosen
            ]
        return EvalResult(metrics=metrics, items=items, requests=len(chosen))

    def direction(self, metric: str) -> Direction:
        return "minimize"

    def metric_names(self) -> dict[str, set[str]]:
        """What every call returns, known before any (see ``Evaluator``)."""
        return {self.task: {"perplexity", "bits_per_byte"}}

    def _windows_for(self, model: Any, tokenizer: Any) -> list[tuple[list[int], int]]:
        """(token ids, number of trailing tokens to score) per window, cached per tokenizer."""
        max_length = self.max_length or min(
            getattr(model.config, "max_position_embeddings", 2048), 2048
        )
        stride = self.stride or max(1, max_length // 2)
        if not 0 < stride <= max_length - 1:
            raise EvaluatorError(
                f"perplexity: stride must be in [1, max_length - 1], got {stride} "
                f"with max_length {max_length}"
            )
        key = (id(tokenizer), max_length, stride)
        if key not in self._windows:
            # a leading BOS (or EOS) gives the first token of the text a context, as lm-eval does
            prefix = (
                tokenizer.bos_token_id
                if tokenizer.bos_token_id is not None
                else tokenizer.eos_token_id
            )
            ids = [prefix, *tokenizer(self.text, add_special_tokens=False)["input_ids"]]
            windows = []
            scored_until = 1  # index of the first token not yet scored
            for begin in range(0, len(ids) - 1, stride):
                end = min(begin + max_length, len(ids))
                windows.append((ids[begin:end], end - scored_until))
                scored_until = end
                if end == len(ids):
                    break
            self._windows[key] = windows
        return self._windows[key]

    @staticmethod
    def _bytes_of(window: tuple[list[int], int], tokenizer: Any) -> int:
        ids, n_target = window
        return max(1, len(tokenizer.decode(ids[-n_target:]).encode("utf-8")))
