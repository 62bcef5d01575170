"""Reading a search spec: YAML file or dict, command-line overrides, validation, registry checks.

``load_spec`` is the one way in: whatever it returns has passed the schema and the checks that
need the merge-method registry, so the optimizer never meets an unchecked spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.yaml_io import read_yaml
from mergesearch.search.errors import SpecError
from mergesearch.search.spec.checks import check_spec
from mergesearch.search.spec.schema import SearchSpec, first_message

OVERRIDES = {
    "storage": ("storage",),
    "study_name": ("name",),
    "n_trials": ("budget", "trials"),
    "n_items": ("budget", "items"),
    "timeout": ("budget", "timeout"),
    "sampler": ("sampler", "name"),
    "seed": ("seed",),
    "threads": ("threads",),
    "device": ("device",),
    "memory_limit_gb": ("memory_limit_gb",),
    "pruner": ("pruner", "name"),
    "heartbeat": ("heartbeat", "interval"),
    "grace_period": ("heartbeat", "grace_period"),
}


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with command-line style overrides (``n_trials=10``...) applied."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise TypeError(f"unknown override {key!r}; known: {', '.join(OVERRIDES)}")
        if value is None:
            continue
        node = data
        *parents, leaf = OVERRIDES[key]
        for parent in parents:
            current = node.get(parent)
            if isinstance(current, str):  # `sampler: tpe` shorthand
                current = {"name": current}
            node[parent] = dict(current or {})
            node = node[parent]
        node[leaf] = value
    return data


def load_spec(spec: str | Path | dict[str, Any] | SearchSpec, **overrides: Any) -> SearchSpec:
    """Read and validate a search spec; ``overrides`` are the command-line flags."""
    if isinstance(spec, SearchSpec):
        if not overrides:
            return spec
        source, data = spec.source, spec.raw
    elif isinstance(spec, dict):
        source, data = "<spec>", spec
    else:
        path = Path(spec)
        source = str(path)
        if not path.is_file():
            raise SpecError(f"{source}: no such search spec file")
        try:
            data = read_yaml(path)
        except ConfigError as err:  # bounded reading: one line, the spec's own error type
            raise SpecError(str(err)) from None
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a search spec is a YAML mapping of keys")
        data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides)
    try:
        parsed = SearchSpec.model_validate({**data, "source": source, "raw": data})
    except ValidationError as err:
        raise SpecError(f"{source}: {first_message(err, with_loc=True)}") from None
    check_spec(parsed)
    return parsed
