"""Parameter values of a search spec: fixed, searched (a range or choices), or one per model.

``parse_value`` turns what a user wrote under ``parameters:`` (or a passthrough slice) into one
of three frozen types, with a one-line ``ValueError`` when it cannot:

- ``Fixed``: ``lambda: 1.0``, a mergekit gradient list ``[0.2, 0.8]``, ``normalize: false``;
- ``Range``: ``{low: 0.1, high: 1.0}`` (``log``, ``step``, ``layer_groups``, ``filters``) or
  ``{choices: [...]}``;
- ``PerModel``: ``{rev: {low: 0, high: 1}, up: 1.0}`` for per-model parameters.

A list is always a fixed gradient, never a range: ``[0, 1]`` means "0 at the first layer, 1 at
the last" in mergekit, so a searched range must be written as a mapping.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from mergesearch.merging.errors import did_you_mean

Scalar = float | int | bool | str


class Frozen(BaseModel):
    """The base of every spec model: immutable once validated, and an unknown key is an error
    (a misspelt key would otherwise be dropped in silence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- parameter values


class Fixed(Frozen):
    """A value the search does not change: a number, a boolean or a gradient list."""

    value: Scalar | tuple[float, ...]


class Range(Frozen):
    """A searched value: ``low..high`` (float or int) or one of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Scalar, ...] | None = None
    integer: bool = False
    layer_groups: int | None = Field(default=None, ge=1)
    filters: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or choices)")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("range bounds must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"range low {self.low:g} > high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError("step must be > 0 and cannot be combined with log")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("this range takes whole numbers")
        return self


class PerModel(Frozen):
    """One value per source model of a per-model parameter (``weight``, ``density``...)."""

    values: dict[str, Fixed | Range]


RANGE_KEYS = ("low", "high", "log", "step", "choices", "layer_groups", "filters")


def parse_value(value: Any, *, per_model_ok: bool = True, integer: bool = False):
    if isinstance(value, Fixed | Range | PerModel):
        return value
    if isinstance(value, dict):
        keys = set(value)
        if keys & set(RANGE_KEYS) or not keys:
            unknown = sorted(keys - set(RANGE_KEYS))
            if unknown:
                raise ValueError(
                    f"unknown key {unknown[0]!r} in a range{did_you_mean(unknown[0], RANGE_KEYS)};"
                    f" allowed: {', '.join(RANGE_KEYS)}"
                )
            try:
                return Range(**value, integer=integer)
            except ValidationError as err:
                raise ValueError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None
        if not per_model_ok:
            raise ValueError(
                f"expected a value or a range ({{low, high}} or {{choices}}), got {value!r}"
            )
        parsed = {}
        for name, item in value.items():
            try:
                parsed[str(name)] = parse_value(item, per_model_ok=False, integer=integer)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        return PerModel(values=parsed)
    if isinstance(value, list | tuple):
        if not value or not all(is_number(v) for v in value):
            raise ValueError(
                f"a list is a fixed gradient of numbers, got {value!r}; "
                "write a searched range as {low: ..., high: ...}"
            )
        return Fixed(value=tuple(float(v) for v in value))
    if isinstance(value, bool | int | float | str):
        if integer and isinstance(value, bool | float):
            raise ValueError(f"expected a whole number, got {value!r}")
        return Fixed(value=value)
    raise ValueError(f"expected a value, a range or one value per model, got {value!r}")


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


ParamValue = Annotated[Fixed | Range | PerModel, PlainValidator(parse_value)]
