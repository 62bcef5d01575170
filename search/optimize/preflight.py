"""Spec checks that need the opened sources, run once before the study exists.

``layer_groups`` splits the layers into groups with one searched value each: more groups than
the model has layers are dimensions that change nothing. A tensor-name ``filter`` that matches
no tensor of the sources is a typo whose parameters the sampler would tune for nothing. Both
are refused here, with one line naming the key, before a trial runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mergesearch import merging
from mergesearch.search.errors import SpecError
from mergesearch.search.spec.schema import SearchSpec
from mergesearch.search.spec.values import PerModel, Range


def _ranges(spec: SearchSpec) -> Iterator[tuple[str, Range]]:
    """Every searched range of the spec, with its key path."""
    sections: list[tuple[str, dict[str, Any]]] = [("parameters", spec.parameters)]
    sections += [(f"methods.{m}", o.parameters) for m, o in spec.methods.items()]
    for prefix, params in sections:
        for param, value in params.items():
            items = value.values.items() if isinstance(value, PerModel) else [("", value)]
            for model, item in items:
                if isinstance(item, Range) and item.choices is None:
                    yield f"{prefix}.{param}" + (f".{model}" if model else ""), item


def check_against_sources(spec: SearchSpec, merger: merging.Merger, depths: dict[str, int]) -> None:
    """``SpecError`` for layer groups beyond the sources' depth or filters matching nothing."""
    layers = min((d for d in depths.values() if d), default=0)
    names: set[str] = set()
    for source in spec.sources.names():
        names.update(merger.checkpoints.get(spec.sources.path(source)).names)
    granularity = spec.granularity
    if layers and granularity.layer_groups > layers:
        raise SpecError(
            f"{spec.source}: granularity.layer_groups: {granularity.layer_groups} groups but the "
            f"sources have {layers} layers; use at most {layers}"
        )
    _check_filters(spec, "granularity.filters", granularity.filters, names)
    for key, rng in _ranges(spec):
        if layers and rng.layer_groups is not None and rng.layer_groups > layers:
            raise SpecError(
                f"{spec.source}: {key}.layer_groups: {rng.layer_groups} groups but the sources "
                f"have {layers} layers; use at most {layers}"
            )
        _check_filters(spec, f"{key}.filters", rng.filters or (), names)


def _check_filters(spec: SearchSpec, key: str, filters: tuple[str, ...], names: set[str]) -> None:
    for i, flt in enumerate(filters):
        if not any(flt in name for name in names):
            example = sorted(names)[0] if names else "none"
            raise SpecError(
                f"{spec.source}: {key}[{i}]: filter {flt!r} matches no tensor of the sources; "
                f"a filter is part of a tensor name (e.g. 'mlp', 'self_attn'; a name: {example})"
            )
