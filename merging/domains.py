"""The values a merge parameter can take, by name: one table for the planner and the search spec.

A parameter outside its domain does not merge into something worse, it merges into nothing:
``density 0`` keeps no element, a negative ``gamma`` or ``epsilon`` selects backwards. The
planner refuses such a value in a merge config; the search spec checks its ranges against the
same table while it loads, so a range that reaches outside never costs a trial. Parameters not
listed take any finite number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # low itself is outside

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


DOMAINS: dict[str, Domain] = {
    "density": Domain(0.0, 1.0, low_open=True),  # the fraction of each task vector kept
    "gamma": Domain(0.0),  # breadcrumbs: the largest fraction dropped
    "epsilon": Domain(0.0),  # della: the spread of keep probabilities
}


def domain_problem(name: str, value: float) -> str | None:
    """Why ``value`` cannot be parameter ``name`` (one phrase), or ``None`` when it can."""
    if not math.isfinite(value):
        return f"{name} {value} is not a finite number"
    domain = DOMAINS.get(name)
    if domain is None or value in domain:
        return None
    if domain.high == math.inf:
        return f"{name} {value:g} must be {domain}"
    return f"{name} {value:g} is outside {domain}; use a value in {domain}"
