"""The mergekit YAML schema: parse, validate up front, emit back.

Validation happens at the edge so the planner receives typed objects and never re-checks a dict.
Every error is one line naming the file, the key path and the allowed values; unknown keys get a
"did you mean" suggestion. Checks that need the checkpoints (depths, shapes, method arity against
tensors) happen in ``merging.plan`` before any tensor is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergesearch.merging.errors import ConfigError, did_you_mean
from mergesearch.merging.methods import METHODS, BaseRole, MergeMethod
from mergesearch.merging.yaml_io import read_yaml

DTYPES = ("float32", "float16", "bfloat16")


# A parameter value: a scalar, a gradient (tuple of floats) or filters (tuple of FilteredValue).
Scalar = float | int | bool | str | None
ParamValue = Scalar | tuple


@dataclass(frozen=True)
class FilteredValue:
    """One ``{filter, value}`` entry; ``filter=None`` is the fallback (``*`` or absent)."""

    filter: str | None
    value: Scalar | tuple


@dataclass(frozen=True)
class InputModel:
    """A model reference with its own parameters and, in the slices form, its layer range."""

    model: str
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class Slice:
    sources: tuple[InputModel, ...]
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeConfig:
    """A validated merge: either ``models`` (one implicit slice) or explicit ``slices``."""

    merge_method: str
    models: tuple[InputModel, ...] | None = None
    slices: tuple[Slice, ...] | None = None
    base_model: str | None = None
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    seed: int | None = None
    source_name: str = "<config>"

    @property
    def model_refs(self) -> list[str]:
        """Every distinct model reference, base first, in order of appearance."""
        refs: list[str] = [self.base_model] if self.base_model else []
        inputs = self.models or tuple(s for sl in self.slices or () for s in sl.sources)
        for item in inputs:
            if item.model not in refs:
                refs.append(item.model)
        return refs

    def to_dict(self) -> dict[str, Any]:
        """Plain data in mergekit's schema (keys it would not know are left out when unset)."""
        out: dict[str, Any] = {}
        if self.models is not None:
            out["models"] = [_input_to_dict(m) for m in self.models]
        if self.slices is not None:
            out["slices"] = [
                {
                    "sources": [_input_to_dict(s) for s in sl.sources],
                    **({"parameters": _params_to_dict(sl.parameters)} if sl.parameters else {}),
                }
                for sl in self.slices
            ]
        out["merge_method"] = self.merge_method
        if self.base_model is not None:
            out["base_model"] = self.base_model
        if self.parameters:
            out["parameters"] = _params_to_dict(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source", "seed"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def _input_to_dict(item: InputModel) -> dict[str, Any]:
    out: dict[str, Any] = {"model": item.model}
    if item.layer_range is not None:
        out["layer_range"] = list(item.layer_range)
    if item.parameters:
        out["parameters"] = _params_to_dict(item.parameters)
    return out


def _params_to_dict(params: dict[str, ParamValue]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple) and value and isinstance(value[0], FilteredValue):
            return [
                {**({"filter": v.filter} if v.filter is not None else {}), "value": plain(v.value)}
                for v in value
            ]
        if isinstance(value, tuple):
            return list(value)
        return value

    return {key: plain(value) for key, value in params.items()}


# --------------------------------------------------------------------------------------------
# parsing


TOP_KEYS = (
    "models",
    "slices",
    "merge_method",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "seed",
)
INPUT_KEYS = ("model", "parameters", "layer_range")
SLICE_KEYS = ("sources", "parameters")
# mergekit keys we understand but do not implement: a clear refusal beats a silent ignore.
UNSUPPORTED_KEYS = {
    "tokenizer": "use tokenizer_source",
    "chat_template": "copy the template into the tokenizer of the tokenizer source",
    "modules": "multi-module merges are not supported; use slices",
}


class _Where:
    """Builds the ``file: key.path`` prefix of error messages."""

    def __init__(self, source: str):
        self.source = source

    def error(self, path: str, message: str) -> ConfigError:
        where = f"{self.source}: {path}" if path else self.source
        return ConfigError(f"{where}: {message}")


def _check_keys(data: dict, allowed: tuple[str, ...], path: str, where: _Where) -> None:
    for key in data:
        if key in allowed:
            continue
        if key in UNSUPPORTED_KEYS and path == "":
            raise where.error(key, f"is not supported ({UNSUPPORTED_KEYS[key]})")
        raise where.error(
            f"{path}.{key}" if path else str(key),
            f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}",
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_param_value(value: Any, path: str, where: _Where) -> ParamValue:
    if value is None or isinstance(value, (bool, str)):
        return value
    if _is_number(value):
        if not math.isfinite(value):
            raise where.error(path, f"must be a finite number, got {value!r}")
        return value
    if isinstance(value, list):
        if not value:
            raise where.error(path, "is an empty list; give a number, a gradient or filters")
        if all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
        if all(isinstance(v, dict) for v in value):
            entries = []
            for i, entry in enumerate(value):
                entry_path = f"{path}[{i}]"
                _check_keys(entry, ("filter", "value"), entry_path, where)
                if "value" not in entry:
                    raise where.error(entry_path, "filter entry needs a 'value'")
                inner = _parse_param_value(entry["value"], f"{entry_path}.value", where)
                if isinstance(inner, tuple) and inner and isinstance(inner[0], FilteredValue):
                    raise where.error(entry_path, "filter entries cannot nest")
                flt = entry.get("filter")
                if flt is not None and not isinstance(flt, str):
                    raise where.error(f"{entry_path}.filter", "must be a string")
                entries.append(FilteredValue(None if flt in (None, "*") else flt, inner))
            return tuple(entries)
    raise where.error(
        path,
        f"must be a number, a gradient list of numbers or a list of {{filter, value}}, "
        f"got {value!r}",
    )


def _parse_params(data: Any, path: str, where: _Where) -> dict[str, ParamValue]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise where.error(path, f"must be a mapping of parameter names to values, got {data!r}")
    return {str(k): _parse_param_value(v, f"{path}.{k}", where) for k, v in data.items()}


def _parse_model_ref(value: Any, path: str, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(path, f"must be a model path or Hub id, got {value!r}")
    if "+" in value:
        raise where.error(
            path, "LoRA references (model+lora) are not supported; merge the LoRA first"
        )
    return value.strip()


def _parse_input(data: Any, path: str, where: _Where, *, in_slice: bool) -> InputModel:
    if isinstance(data, str) and not in_slice:
        return InputModel(model=_parse_model_ref(data, path, where))
    if not isinstance(data, dict):
        raise where.error(path, "must be a mapping with a 'model' key")
    _check_keys(data, INPUT_KEYS, path, where)
    if "model" not in data:
        raise where.error(path, "missing 'model'")
    layer_range = None
    if "layer_range" in data:
        lr = data["layer_range"]
        if (
            not isinstance(lr, list)
            or len(lr) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in lr)
        ):
            raise where.error(f"{path}.layer_range", f"must be [start, end] integers, got {lr!r}")
        if lr[0] < 0 or lr[1] <= lr[0]:
            raise where.error(
                f"{path}.layer_range", f"must satisfy 0 <= start < end (half-open), got {lr}"
            )
        layer_range = (lr[0], lr[1])
    elif in_slice:
        raise where.error(path, "a slice source needs a 'layer_range: [start, end]'")
    if layer_range is not None and not in_slice:
        raise where.error(f"{path}.layer_range", "is only allowed in the slices form")
    return InputModel(
        model=_parse_model_ref(data["model"], f"{path}.model", where),
        parameters=_parse_params(data.get("parameters"), f"{path}.parameters", where),
        layer_range=layer_range,
    )


def _read_source(data: dict | str | Path) -> tuple[Any, str]:
    if isinstance(data, dict):
        return data, "<config>"
    path = Path(data)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; check the path")
    return read_yaml(path), str(path)


def load_merge_config(data: dict | str | Path, *, source_name: str | None = None) -> MergeConfig:
    """Parse and validate a mergekit-style config from a dict or a YAML file."""
    raw, source = _read_source(data)
    where = _Where(source_name or source)
    if not isinstance(raw, dict):
        raise where.error("", "the config must be a YAML mapping with 'merge_method' and 'models'")
    _check_keys(raw, TOP_KEYS, "", where)

    method_name = raw.get("merge_method")
    if method_name is None:
        raise where.error("merge_method", f"is required (one of: {', '.join(sorted(METHODS))})")
    if method_name not in METHODS:
        raise where.error(
            "merge_method",
            f"unknown method {method_name!r}{did_you_mean(method_name, METHODS)}; "
            f"one of: {', '.join(sorted(METHODS))}",
        )
    method = METHODS[method_name]

    has_models, has_slices = "models" in raw, "slices" in raw
    if has_models == has_slices:
        raise where.error("", "give exactly one of 'models' or 'slices'")
    models = slices = None
    if has_models:
        if not isinstance(raw["models"], list) or not raw["models"]:
            raise where.error("models", "must be a non-empty list of models")
        models = tuple(
            _parse_input(m, f"models[{i}]", where, in_slice=False)
            for i, m in enumerate(raw["models"])
        )
    else:
        if not isinstance(raw["slices"], list) or not raw["slices"]:
            raise where.error("slices", "must be a non-empty list of slices")
        parsed = []
        for i, sl in enumerate(raw["slices"]):
            path = f"slices[{i}]"
            if not isinstance(sl, dict):
                raise where.error(path, "must be a mapping with 'sources'")
            _check_keys(sl, SLICE_KEYS, path, where)
            sources = sl.get("sources")
            if not isinstance(sources, list) or not sources:
                raise where.error(f"{path}.sources", "must be a non-empty list")
            items = tuple(
                _parse_input(s, f"{path}.sources[{j}]", where, in_slice=True)
                for j, s in enumerate(sources)
            )
            lengths = {s.layer_range[1] - s.layer_range[0] for s in items}  # type: ignore[index]
            if len(lengths) > 1:
                ranges = ", ".join(str(list(s.layer_range)) for s in items)  # type: ignore[arg-type]
                raise where.error(
                    f"{path}.sources", f"layer ranges must have equal lengths, got {ranges}"
                )
            parsed.append(
                Slice(items, _parse_params(sl.get("parameters"), f"{path}.parameters", where))
            )
        slices = tuple(parsed)

    base_model = None
    if raw.get("base_model") is not None:
        base_model = _parse_model_ref(raw["base_model"], "base_model", where)

    for key in ("dtype", "out_dtype"):
        if raw.get(key) is not None and raw[key] not in DTYPES:
            raise where.error(key, f"must be one of {', '.join(DTYPES)}, got {raw[key]!r}")
    tokenizer_source = raw.get("tokenizer_source")
    if tokenizer_source is not None and (
        not isinstance(tokenizer_source, str) or tokenizer_source == "union"
    ):
        raise where.error(
            "tokenizer_source",
            f"must be 'base' or a model path/Hub id ('union' is not supported), "
            f"got {tokenizer_source!r}",
        )
    seed = raw.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise where.error("seed", f"must be an integer, got {seed!r}")

    config = MergeConfig(
        merge_method=method_name,
        models=models,
        slices=slices,
        base_model=base_model,
        parameters=_parse_params(raw.get("parameters"), "parameters", where),
        dtype=raw.get("dtype"),
        out_dtype=raw.get("out_dtype"),
        tokenizer_source=tokenizer_source,
        seed=seed,
        source_name=where.source,
    )
    _check_method_shape(config, method, where)
    _check_parameter_names(config, method, where)
    return config


def _groups(config: MergeConfig) -> list[tuple[str, tuple[InputModel, ...]]]:
    if config.models is not None:
        return [("models", config.models)]
    return [(f"slices[{i}].sources", sl.sources) for i, sl in enumerate(config.slices or ())]


def _check_method_shape(config: MergeConfig, method: MergeMethod, where: _Where) -> None:
    """Base presence and input counts, per slice, as far as the YAML alone can tell."""
    if method.base == BaseRole.REQUIRED and config.base_model is None:
        raise where.error("base_model", f"is required by merge_method {method.name!r}")
    for path, group in _groups(config):
        refs = [item.model for item in group]
        if method.base == BaseRole.IGNORED:
            count = len(refs)
        else:
            count = len([r for r in refs if r != config.base_model])
        duplicates = {r for r in refs if refs.count(r) > 1}
        if duplicates and not method.stacks_layers:  # stacking may repeat a model's layers
            raise where.error(path, f"lists {sorted(duplicates)[0]!r} twice; list each model once")
        noun = "models" if method.base == BaseRole.IGNORED else "non-base models"
        if count < method.min_inputs:
            raise where.error(
                path,
                f"merge_method {method.name!r} needs at least {method.min_inputs} {noun}, "
                f"got {count}",
            )
        if method.max_inputs is not None and count > method.max_inputs:
            extra = " plus base_model" if method.base != BaseRole.IGNORED else ""
            raise where.error(
                path,
                f"merge_method {method.name!r} takes at most {method.max_inputs} {noun}{extra}, "
                f"got {count}",
            )


def _check_parameter_names(config: MergeConfig, method: MergeMethod, where: _Where) -> None:
    per_model, global_ = set(method.per_model_params), set(method.global_params)
    known = per_model | global_

    def check(params: dict, path: str, allowed: set[str]) -> None:
        for key in params:
            if key in allowed:
                continue
            suggestion = did_you_mean(key, sorted(known))
            scope = "per-model" if key in per_model else "global" if key in global_ else "a"
            listed = ", ".join(sorted(allowed)) or "none"
            raise where.error(
                f"{path}.{key}",
                f"is not {scope} parameter of merge_method {method.name!r}{suggestion}; "
                f"allowed here: {listed}",
            )

    check(config.parameters, "parameters", known)
    for i, sl in enumerate(config.slices or ()):
        check(sl.parameters, f"slices[{i}].parameters", known)
    for path, group in _groups(config):
        for j, item in enumerate(group):
            check(item.parameters, f"{path}[{j}].parameters", per_model)
