"""Every number a spec gives a merge parameter, checked against what the merge can take.

Fixed values, both ends of a range, each choice and each anchor of a gradient must lie in the
parameter's domain (``merging.domains``: a density in (0, 1], ...) and be representable in the
spec's dtype: ``lambda: {high: 1e308}`` becomes ``inf`` in float32, and every trial that draws
near it fails. Found while the spec loads, such a value costs no trial, and the corrected spec is
not refused afterwards as "another search space".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mergesearch.merging.domains import domain_problem
from mergesearch.merging.plan import DTYPE_BY_NAME
from mergesearch.search.errors import SpecError
from mergesearch.search.spec.schema import SearchSpec
from mergesearch.search.spec.values import Fixed, PerModel, Range, is_number


def numbers(value: Any, where: str = "") -> Iterator[tuple[float, str]]:
    """Each number in a parameter value, with the key path suffix that names it."""
    if isinstance(value, PerModel):
        for model, item in value.values.items():
            yield from numbers(item, f"{where}.{model}")
    elif isinstance(value, Range):
        if value.choices is not None:
            for i, choice in enumerate(value.choices):
                if is_number(choice):
                    yield float(choice), f"{where}.choices[{i}]"
        else:
            yield float(value.low), f"{where}.low"  # type: ignore[arg-type]
            yield float(value.high), f"{where}.high"  # type: ignore[arg-type]
    elif isinstance(value, Fixed):
        if isinstance(value.value, tuple):
            for i, anchor in enumerate(value.value):
                yield float(anchor), f"{where}[{i}]"
        elif is_number(value.value):
            yield float(value.value), where


def check_ranges(spec: SearchSpec, key: str, param: str, value: Any) -> None:
    """``SpecError`` naming the key when a number of ``value`` cannot be parameter ``param``."""
    largest = torch.finfo(DTYPE_BY_NAME[spec.dtype]).max
    for number, where in numbers(value):
        problem = domain_problem(param, number)
        if problem is None and abs(number) > largest:
            problem = (
                f"{param} {number:g} overflows {spec.dtype} (largest {largest:.3g}): every merge "
                "would be inf; use a smaller value"
            )
        if problem is not None:
            raise SpecError(f"{spec.source}: {key}{where}: {problem}")
