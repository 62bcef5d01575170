"""A fixed point of a searched range: where a parameter sits when no sampler chose it.

Used for a method's default point (where the portfolio starts each method) and for parameters a
method ignores (held still, so merges that differ only there are recognised as duplicates).
It depends on Optuna's distributions alone, so the sampler registry can reach the portfolio
without reaching the spec.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, IntDistribution


def middle(dist: BaseDistribution) -> Any:
    """The middle of a numeric range (geometric for a log range), on its step grid."""
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    middle = (low * high) ** 0.5 if getattr(dist, "log", False) else (low + high) / 2
    step = getattr(dist, "step", None)
    if step:
        middle = low + round((middle - low) / step) * step
    return int(middle) if isinstance(dist, IntDistribution) else middle
