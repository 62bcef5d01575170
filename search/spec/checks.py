"""Spec checks that need the merge-method registry: each method exists, takes the parameters the
spec gives it, has the inputs it needs; slices name real sources. One-line ``SpecError``s that
name the key, raised while the spec loads, before any study exists."""

from __future__ import annotations

from typing import Any

from mergesearch import merging
from mergesearch.merging.errors import did_you_mean
from mergesearch.merging.methods import REQUIRED, BaseRole
from mergesearch.search.errors import SpecError
from mergesearch.search.spec.ranges import check_ranges
from mergesearch.search.spec.schema import SearchSpec
from mergesearch.search.spec.values import PerModel, Range


def check_spec(spec: SearchSpec) -> None:
    """Checks that need the merge-method registry; one-line ``SpecError`` naming the key."""
    src, known = spec.source, merging.METHODS
    models = set(spec.sources.models)
    taken: set[str] = set()
    for name, override in spec.methods.items():
        if name not in known:
            raise SpecError(
                f"{src}: methods: unknown merge method {name!r}{did_you_mean(name, known)}; "
                f"choose from {', '.join(sorted(known))}"
            )
        method = known[name]
        if method.base == BaseRole.REQUIRED and not spec.sources.base and len(models) < 2:
            raise SpecError(
                f"{src}: sources.base: merge method {name!r} needs a base model "
                f"({method.base_name}); give sources.base: PATH (or {{name: PATH}} to name it)"
            )
        takes = {**method.per_model_params, **method.global_params}
        if method.stacks_layers:  # searched by its slices, not by parameters
            if not override.slices:
                raise SpecError(
                    f"{src}: methods.{name}.slices: list the slices to search, "
                    "e.g. [{source: a, start: {low: 0, high: 8}, length: 8}]"
                )
            if override.parameters:
                key = next(iter(override.parameters))
                raise SpecError(
                    f"{src}: methods.{name}.{key}: {name} takes only slices in a search spec"
                )
            _check_slices(spec, name, override.slices)
            continue
        if override.slices:
            stacking = ", ".join(m.name for m in known.values() if m.stacks_layers)
            raise SpecError(
                f"{src}: methods.{name}.slices: slices apply only to methods that stack layers "
                f"({stacking})"
            )
        for param, value in override.parameters.items():
            if param not in takes:
                raise SpecError(
                    f"{src}: methods.{name}.{param}: merge method {name!r} does not take "
                    f"{param!r}{did_you_mean(param, takes)}; it takes: {', '.join(takes) or 'nothing'}"
                )
            _check_value(spec, f"methods.{name}.{param}", name, param, value)
        taken |= set(takes)
        space_inputs = _inputs(spec, name)
        if method.max_inputs is not None and len(space_inputs) > method.max_inputs:
            raise SpecError(
                f"{src}: sources.models: merge method {name!r} takes at most {method.max_inputs} "
                f"model(s) besides the base, the spec lists {len(space_inputs)}"
                + _base_hint(spec, method)
            )
        if len(space_inputs) < method.min_inputs:
            raise SpecError(
                f"{src}: sources.models: merge method {name!r} needs at least {method.min_inputs} "
                f"model(s) besides the base, the spec lists {len(space_inputs)}"
            )
        for param, default in takes.items():
            if default is not REQUIRED:
                continue
            value = override.parameters.get(param, spec.parameters.get(param))
            if value is None:
                raise SpecError(
                    f"{src}: parameters.{param}: merge method {name!r} needs {param!r}; "
                    "give a value or a range {low, high}"
                )
            if isinstance(value, PerModel) and param in method.per_model_params:
                missing = [m for m in space_inputs if m not in value.values]
                if missing:
                    raise SpecError(
                        f"{src}: parameters.{param}: no value for model {missing[0]!r} "
                        f"(merge method {name!r} needs one per model)"
                    )
    for param, value in spec.parameters.items():
        if param not in taken:
            names = ", ".join(spec.methods)
            hint = did_you_mean(param, taken)
            raise SpecError(
                f"{src}: parameters.{param}: none of the methods ({names}) takes {param!r}{hint}"
            )
        for name in spec.methods:
            method = known[name]
            if param in method.global_params or param in method.per_model_params:
                _check_value(spec, f"parameters.{param}", name, param, value)


def _base_hint(spec: SearchSpec, method: merging.MergeMethod) -> str:
    """How to give a method that takes the base and one other model what it needs."""
    if method.base == BaseRole.IGNORED:
        return ""
    if spec.sources.base:
        return (
            f"; {method.name} merges its {method.base_name} (sources.base) with one model: "
            "move one model to sources.base in place of the current one, or leave "
            f"sources.base out (the first model then serves as the {method.base_name})"
        )
    return (
        f"; {method.name} merges a base (its {method.base_name}) with one model: put one of "
        "them under sources.base (a mapping {name: PATH} names it)"
    )


def _inputs(spec: SearchSpec, method_name: str) -> list[str]:
    names = list(spec.sources.models)
    if merging.METHODS[method_name].base == BaseRole.REQUIRED and not spec.sources.base:
        return names[1:]
    return names


def _check_value(spec: SearchSpec, key: str, method_name: str, param: str, value: Any) -> None:
    check_ranges(spec, key, param, value)
    method = merging.METHODS[method_name]
    if isinstance(value, PerModel):
        if param not in method.per_model_params:
            raise SpecError(
                f"{spec.source}: {key}: {param!r} is a global parameter of {method_name!r}; "
                "give one value or range, not one per model"
            )
        for model in value.values:
            if model not in spec.sources.models:
                raise SpecError(
                    f"{spec.source}: {key}.{model}: unknown model{did_you_mean(model, spec.sources.models)}; "
                    f"models: {', '.join(spec.sources.models)}"
                )


def _check_slices(spec: SearchSpec, method_name: str, slices: tuple) -> None:
    names = spec.sources.names()
    for i, sl in enumerate(slices):
        key = f"{spec.source}: methods.{method_name}.slices[{i}]"
        sources = sl.source.choices if isinstance(sl.source, Range) else (sl.source.value,)
        if sources is None:
            raise SpecError(f"{key}.source: give a source name or {{choices: [names]}}")
        for source in sources:
            if source not in names:
                raise SpecError(
                    f"{key}.source: unknown source {source!r}{did_you_mean(str(source), names)}; "
                    f"sources: {', '.join(names)}"
                )
        for field, low in (("start", 0), ("length", 1)):
            value = getattr(sl, field)
            smallest = value.low if isinstance(value, Range) else value.value
            if isinstance(value, Range) and value.choices is not None:
                raise SpecError(f"{key}.{field}: give a number or {{low, high}}")
            if not isinstance(smallest, int | float) or smallest < low:
                raise SpecError(f"{key}.{field}: must be a whole number >= {low}, got {smallest!r}")
