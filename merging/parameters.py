"""Resolve a parameter for one tensor: precedence, filters and gradients.

Lookup order, first hit wins: the source's ``parameters``, the slice's, the top level's. A value
is a scalar, a gradient (numbers interpolated over the layers of the slice) or a list of
``{filter, value}`` entries whose first substring match wins; when nothing matches, the lookup
falls through to the next level. ``docs/METHODS.md`` states the rules in full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mergesearch.merging.config import FilteredValue, ParamValue

_MISSING = object()


@dataclass(frozen=True)
class LayerPosition:
    """Where a tensor sits for gradient interpolation: layer ``index`` of a slice of ``count``.

    Tensors outside the layers (embeddings, final norm, lm_head) have ``index=None`` and use
    ``t = 0``, the first anchor; a one-layer slice uses ``t = 1``.
    """

    index: int | None = None
    count: int = 1

    @property
    def t(self) -> float:
        if self.index is None:
            return 0.0
        return 1.0 if self.count <= 1 else self.index / (self.count - 1)


def interpolate_gradient(anchors: Sequence[float], position: LayerPosition) -> float:
    """Piecewise-linear value of ``anchors`` spread evenly over the slice's layers."""
    if len(anchors) == 1:
        return float(anchors[0])
    s = position.t * (len(anchors) - 1)
    i0 = math.floor(s)
    i1 = min(len(anchors) - 1, i0 + 1)
    frac = s - i0
    return (1.0 - frac) * anchors[i0] + frac * anchors[i1]


def _value_at(value: ParamValue, tensor_name: str, position: LayerPosition) -> Any:
    """Value of one level for one tensor, or ``_MISSING`` when its filters do not match."""
    if isinstance(value, tuple) and value and isinstance(value[0], FilteredValue):
        for entry in value:
            if entry.filter is None or entry.filter in tensor_name:
                return _value_at(entry.value, tensor_name, position)
        return _MISSING
    if isinstance(value, tuple):
        return interpolate_gradient(value, position)
    return value


def resolve_parameter(
    name: str,
    levels: Sequence[dict[str, ParamValue]],
    tensor_name: str,
    position: LayerPosition,
    default: Any = _MISSING,
) -> Any:
    """First hit over ``levels`` (most specific first), else ``default`` (may be ``_MISSING``)."""
    for params in levels:
        if name in params:
            found = _value_at(params[name], tensor_name, position)
            if found is not _MISSING:
                return found
    return default


def is_missing(value: Any) -> bool:
    return value is _MISSING
