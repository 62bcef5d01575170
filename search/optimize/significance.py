"""Is a held-out gain real? Its standard error, from paired per-item scores.

A merge and the source it is compared with are scored on the same held-out items, so the
honest error of their difference comes from the per-item differences (a paired comparison):
much tighter than two independent binomial errors when both get the same easy items right. For
a weighted sum of objectives the gain is the weighted sum of per-objective mean differences,
and its variance the weighted sum of their variances. A gain below two standard errors is
reported as not significant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ItemScores = Sequence[Sequence[float]]  # (document id, score) pairs
SIGNIFICANT_AT = 2.0  # standard errors


@dataclass(frozen=True)
class Gain:
    """``value`` with its standard error (``None`` when per-item scores were not kept)."""

    value: float
    stderr: float | None = None

    @property
    def significant(self) -> bool | None:
        if self.stderr is None:
            return None
        return abs(self.value) >= SIGNIFICANT_AT * self.stderr and self.value != 0

    def describe(self) -> str:
        if self.stderr is None:
            return f"{self.value:+.3f}"
        verdict = "" if self.significant else ", not significant"
        return f"{self.value:+.3f} ± {self.stderr:.3f} (1 s.e.{verdict})"


def paired_gain(
    items: Mapping[str, ItemScores],
    reference: Mapping[str, ItemScores],
    weights: Mapping[str, float],
) -> Gain | None:
    """Weighted gain of ``items`` over ``reference``, per objective name -> item scores.

    ``weights`` are signed (a minimised objective enters negated), as in the study value.
    Only documents both were scored on count. ``None`` when an objective lacks items.
    """
    value, variance = 0.0, 0.0
    for name, weight in weights.items():
        ours = {int(doc): float(score) for doc, score in items.get(name, ())}
        theirs = {int(doc): float(score) for doc, score in reference.get(name, ())}
        common = sorted(ours.keys() & theirs.keys())
        if not common:
            return None
        diffs = [ours[d] - theirs[d] for d in common]
        n = len(diffs)
        mean = sum(diffs) / n
        spread = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
        value += weight * mean
        variance += weight**2 * spread / n
    return Gain(value, math.sqrt(variance))
