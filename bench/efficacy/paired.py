"""How sure is a regret? Its standard error, paired by held-out item.

A run's regret is the reference merge's held-out score minus the chosen merge's. Both are
scored on the same 200 items per task, so the honest error of that difference comes from the
per-item differences (as for a merge's gain over its best source in the product): two merges
that answer the same items right differ by nothing, whatever the binomial error of each. A
regret under two of these standard errors is not told apart from zero, and a target such as
"worst regret <= 0.03" can only be judged where the error is well below 0.03.

The reference's per-item scores are recorded in ``reference.json`` as one string per task
(exact match is 0 or 1 per item; character ``i`` is item ``i``), and each run records only its
regret's standard error. ``Rescorer`` rebuilds a recorded merge from its mergekit YAML (the
config's own seed, as the search merged it) and scores it again, for records made before either
was kept; the rebuilt score must equal the recorded one, or the record is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergesearch.search.optimize.significance import Gain, paired_gain

ItemScores = Mapping[str, Sequence[Sequence[float]]]  # task -> (document id, score) pairs


def encode_items(items: ItemScores) -> dict[str, str]:
    """Per task, the 0/1 item scores as one string ordered by document id.

    ``ValueError`` when a task's documents are not 0..n-1 or a score is not 0 or 1: the string
    form holds exact match only, and a gap would shift every later item."""
    encoded = {}
    for task, pairs in items.items():
        by_doc = {int(doc): float(score) for doc, score in pairs}
        if sorted(by_doc) != list(range(len(by_doc))):
            raise ValueError(f"{task}: item ids are not 0..{len(by_doc) - 1}")
        if any(score not in (0.0, 1.0) for score in by_doc.values()):
            raise ValueError(f"{task}: item scores are not all 0 or 1")
        encoded[task] = "".join("1" if by_doc[d] else "0" for d in range(len(by_doc)))
    return encoded


def decode_items(encoded: Mapping[str, str]) -> dict[str, list[tuple[int, float]]]:
    return {task: [(i, float(c == "1")) for i, c in enumerate(s)] for task, s in encoded.items()}


def regret_with_error(
    reference: ItemScores, chosen: ItemScores, targets: Sequence[str]
) -> Gain | None:
    """The reference's held-out lead over the chosen merge (the regret), equal weights over
    ``targets`` as the suite scores, with its paired standard error; ``None`` when a target
    lacks items."""
    weights = {t: 1 / len(targets) for t in targets}
    return paired_gain(reference, chosen, weights)


def regret_stderr(
    reference: Mapping[str, Any], chosen: ItemScores, targets: Sequence[str]
) -> float | None:
    """The standard error of a run's regret against a reference record of ``reference.json``;
    ``None`` where either kept no per-item scores."""
    encoded = reference.get("heldout_items")
    if not encoded or not chosen:
        return None
    error = regret_with_error(decode_items(encoded), chosen, targets)
    return error.stderr if error else None


class Rescorer:
    """Held-out per-item scores of recorded merges of one landscape (one evaluator and one
    working model for all of them, as a search keeps)."""

    def __init__(self, landscape: Any) -> None:
        from mergesearch.search.demo.table import DemoScorer

        self.scorer = DemoScorer(landscape.root, split="heldout", threads=1)

    def items(self, merge_config: str) -> tuple[float, dict[str, list[tuple[int, float]]]]:
        """The merge's mean held-out score and its per-item scores."""
        import yaml

        got = self.scorer.scores(yaml.safe_load(merge_config), per_item=True, seed=None)
        return got["mean"], got["items"]

    def items_as_recorded(
        self, merge_config: str, recorded: float
    ) -> dict[str, list[tuple[int, float]]] | None:
        """The merge's per-item scores, or ``None`` when it rebuilds to another mean held-out
        score than ``recorded``: then the items are not those of the recorded merge."""
        mean, items = self.items(merge_config)
        return items if abs(mean - recorded) <= 1e-9 else None
