"""The search spec: a YAML file that says what to merge, how to search and what to score.

Validated at the edge, once: ``load_spec`` turns a path or a dict into a frozen ``SearchSpec``
(pydantic) or raises ``SpecError`` with one line naming the file, the key and what is allowed.
The inner code (``space``, ``objective``, ``study``) never re-checks a dict. Parameter values
(fixed, a range, one per model) are parsed by ``search.values``; the checks that need the
merge-method registry (which method takes which parameter) are in ``spec.checks``; reading a
file and applying command-line overrides is ``spec.load``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from mergesearch.merging.config import DTYPES
from mergesearch.merging.errors import did_you_mean
from mergesearch.search.distributed.urls import hide_passwords
from mergesearch.search.optimize.registry import (
    AUTO,
    PRUNER_NAMES,
    PRUNERS,
    SAMPLER_NAMES,
    SAMPLERS,
)
from mergesearch.search.spec.values import (
    Fixed,
    Frozen,
    ParamValue,
    Range,
    is_number,
    parse_value,
)

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
RESERVED_SOURCE_NAMES = ("base", "average")


# --------------------------------------------------------------------------- sections


class Sources(Frozen):
    """``base`` is a path or Hub id (its name is then ``base``) or a one-entry mapping
    ``{name: path}`` that names it: for SLERP the base is the t=0 end, and tables, plots and
    cards then call it by its own name."""

    base: str | None = None
    base_name: str = "base"
    models: dict[str, str]

    @model_validator(mode="before")
    @classmethod
    def _named_base(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("base"), dict):
            named = data["base"]
            if len(named) != 1:
                raise ValueError(
                    "base: give one path or Hub id, or one name: path entry to name it"
                )
            ((name, path),) = named.items()
            data = {**data, "base": path, "base_name": str(name)}
        return data

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, str]) -> dict[str, str]:
        if not models:
            raise ValueError("list at least one model, as name: path-or-hub-id")
        for name in models:
            if not NAME_RE.match(name):
                raise ValueError(
                    f"model name {name!r} must start with a letter and use letters, digits, _ or -"
                )
            if name in RESERVED_SOURCE_NAMES:
                raise ValueError(f"model name {name!r} is reserved; pick another name")
        return models

    @field_validator("base_name")
    @classmethod
    def _base_name(cls, name: str) -> str:
        if not NAME_RE.match(name) or name == "average":
            raise ValueError(
                f"base name {name!r} must start with a letter and use letters, digits, _ or -"
                " (and not be 'average')"
            )
        return name

    @model_validator(mode="after")
    def _distinct(self) -> Sources:
        """Two names for one model weight it twice in every merge and make the baselines
        repeat: almost certainly a copy-paste slip."""
        if self.base and self.base_name in self.models:
            raise ValueError(
                f"base name {self.base_name!r} is also a model name; name the base another way"
            )
        seen: dict[str, str] = {}
        for name in self.names():
            path = self.path(name)
            key = (
                str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path
            )
            if key in seen:
                raise ValueError(
                    f"{seen[key]!r} and {name!r} are the same model ({path}); list each model once"
                )
            seen[key] = name
        return self

    def names(self) -> list[str]:
        """Every source name: the base's first when there is one."""
        return ([self.base_name] if self.base else []) + list(self.models)

    def path(self, name: str) -> str:
        if self.base and name == self.base_name:
            return self.base
        return self.models[name]


class SliceSpec(Frozen):
    """One searched slice of a passthrough merge: ``layers [start, start+length)`` of ``source``."""

    source: Annotated[Fixed | Range, PlainValidator(lambda v: parse_value(v, per_model_ok=False))]
    start: Annotated[
        Fixed | Range, PlainValidator(lambda v: parse_value(v, per_model_ok=False, integer=True))
    ]
    length: Annotated[
        Fixed | Range, PlainValidator(lambda v: parse_value(v, per_model_ok=False, integer=True))
    ]


class MethodSpec(Frozen):
    """Parameters given for one method only; they override the shared ``parameters``."""

    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    slices: tuple[SliceSpec, ...] = ()


def _parse_methods(value: Any) -> dict[str, MethodSpec]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("list at least one merge method")
        return {str(name): MethodSpec() for name in value}
    if isinstance(value, dict):
        if not value:
            raise ValueError("list at least one merge method")
        out = {}
        for name, body in value.items():
            body = dict(body or {})
            slices = body.pop("slices", ())
            try:
                out[str(name)] = MethodSpec(parameters=body, slices=slices)
            except ValidationError as err:
                raise ValueError(f"{name}: {first_message(err)}") from None
        return out
    raise ValueError("give a list of method names or a mapping method: {parameter: value}")


class Granularity(Frozen):
    layer_groups: int = Field(default=1, ge=1)
    filters: tuple[str, ...] = ()


class Split(Frozen):
    """Which items of which task a split scores: all, the first ``limit``, or ``items [a, b)``."""

    task: str | None = None
    limit: int | None = Field(default=None, ge=1)
    items: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> Split:
        if self.limit is not None and self.items is not None:
            raise ValueError("give limit or items, not both")
        if self.items is not None and not 0 <= self.items[0] < self.items[1]:
            raise ValueError(
                f"items must be [start, stop) with 0 <= start < stop, got {self.items}"
            )
        return self


class Objective(Frozen):
    name: str
    evaluator: str = "lm_eval"
    metric: str
    weight: float = Field(default=1.0, allow_inf_nan=False)  # NaN would fail every trial
    direction: Literal["maximize", "minimize"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    splits: dict[str, Split]

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        task = data.pop("task", None)
        splits = data.get("splits") or {}
        if not isinstance(splits, dict):
            raise ValueError(
                "splits maps a split name (search, heldout) to a task or {task, limit, items}"
            )
        splits = {
            k: ({"task": v} if isinstance(v, str) else dict(v or {})) for k, v in splits.items()
        }
        if "search" not in splits:
            if task is None and splits:
                raise ValueError("splits needs a 'search' entry: the split the search optimises")
            splits["search"] = {}
        for split in splits.values():
            split.setdefault("task", task)
        data["splits"] = splits
        data.setdefault("name", splits["search"]["task"])
        if data["name"] is None:
            raise ValueError("give the objective a name (or a task)")
        return data

    def metric_key(self, split: str) -> str:
        """Key of this objective's metric in an ``EvalResult.metrics`` for ``split``."""
        task = self.splits[split].task
        return f"{task}/{self.metric}" if task else self.metric


class SamplerSpec(Frozen):
    name: Literal[SAMPLER_NAMES] = AUTO  # type: ignore[valid-type]
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PrunerSpec(Frozen):
    name: Literal[PRUNER_NAMES] = "none"  # type: ignore[valid-type]
    stages: tuple[int | None, ...] = (None,)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if not stages:
            raise ValueError("give at least one stage (null = all items)")
        sizes = [s for s in stages[:-1]]
        if any(s is None or s < 1 for s in sizes):
            raise ValueError(
                "every stage but the last is a number of items >= 1; the last may be null"
            )
        if sizes != sorted(sizes) or (stages[-1] is not None and sizes and stages[-1] <= sizes[-1]):
            raise ValueError(f"stages must grow, got {list(stages)}")
        return stages


def _parse_seconds(value: Any) -> float | None:
    if value is None or is_number(value):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not match:
        raise ValueError(f"timeout is seconds or a number with s/m/h/d, got {value!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


class Budget(Frozen):
    """What a study may spend, study-wide: ``trials`` (baselines included), and optionally
    ``items``, the evaluator requests of finished and pruned trials (the cost that matters at
    real model sizes). No trial starts once either is spent, or after ``timeout`` seconds."""

    trials: int = Field(default=50, ge=1)
    items: int | None = Field(default=None, ge=1)
    timeout: Annotated[float | None, PlainValidator(_parse_seconds)] = None


class Heartbeat(Frozen):
    """Dead-worker detection (RDB storages): a running trial writes a heartbeat every
    ``interval`` seconds; one silent for ``grace_period`` seconds (default: four intervals) is
    failed and run again once. The grace period is generous because a busy CPU can delay the
    heartbeat thread, and a live worker taken for dead costs a duplicate evaluation."""

    interval: int = Field(default=30, ge=1)
    grace_period: int | None = Field(default=None, ge=2)

    @property
    def grace(self) -> int:
        return self.grace_period if self.grace_period is not None else 4 * self.interval

    @model_validator(mode="after")
    def _check(self) -> Heartbeat:
        if self.grace_period is not None and self.grace_period <= self.interval:
            raise ValueError(
                f"grace_period ({self.grace_period} s) must be longer than interval "
                f"({self.interval} s), or live workers are taken for dead"
            )
        return self


# --------------------------------------------------------------------------- the spec


class SearchSpec(Frozen):
    """A validated search spec. ``source`` says where it came from, for error messages."""

    name: str
    storage: str | None = None
    seed: int = 0
    threads: int = Field(default=1, ge=1)
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    cache_gb: float = Field(default=2.0, ge=0)
    # where the live model lives and is evaluated: cpu, cuda, cuda:N, or auto (a GPU if any)
    device: str = "cpu"
    # the memory the search may use, in GB (default: what the machine has available now)
    memory_limit_gb: float | None = Field(default=None, gt=0)
    sources: Sources
    methods: Annotated[dict[str, MethodSpec], PlainValidator(_parse_methods)]
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    granularity: Granularity = Granularity()
    objectives: tuple[Objective, ...]
    combine: Literal["weighted_sum", "pareto"] = "weighted_sum"
    evaluators: dict[str, dict[str, Any]] = Field(default_factory=dict)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    budget: Budget = Budget()
    heartbeat: Heartbeat = Heartbeat()
    baselines: bool = True
    source: str = "<spec>"
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_validator("name")
    @classmethod
    def _study_name(cls, name: str) -> str:
        if not STUDY_RE.match(name):
            raise ValueError(f"study name {name!r} may use letters, digits, '.', '_' and '-'")
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not DEVICE_RE.match(device):
            raise ValueError(f"device {device!r}: use cpu, cuda, cuda:N (a GPU index) or auto")
        return device

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, objectives: tuple[Objective, ...]) -> tuple[Objective, ...]:
        if not objectives:
            raise ValueError("list at least one objective (evaluator, task, metric, weight)")
        names = [o.name for o in objectives]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"objective names must be unique; {dupes[0]!r} appears twice")
        return objectives

    @model_validator(mode="after")
    def _cross_checks(self) -> SearchSpec:
        sampler = SAMPLERS.get(self.sampler.name)  # None: auto, which picks one that fits
        if self.combine == "pareto" and sampler is not None and not sampler.multi_objective:
            able = ", ".join(n for n, e in SAMPLERS.items() if e.multi_objective)
            raise ValueError(
                f"sampler: {self.sampler.name} searches one objective only; with combine: "
                f"pareto use auto or one of {able}"
            )
        if PRUNERS[self.pruner.name].prunes:
            if self.combine == "pareto":
                raise ValueError(
                    "pruner: Optuna cannot prune multi-objective studies; use pruner: none "
                    "with combine: pareto"
                )
            if len(self.pruner.stages) < 2:
                raise ValueError(
                    f"pruner: {self.pruner.name} needs at least two stages, e.g. stages: [50, null]"
                )
        if self.combine == "pareto" and len(self.objectives) < 2:
            raise ValueError("combine: pareto needs at least two objectives")
        return self

    @property
    def sampler_seed(self) -> int:
        return self.seed if self.sampler.seed is None else self.sampler.seed

    def to_yaml(self) -> str:
        """The spec as written, for the study to keep: a storage password hidden (the report,
        the dashboard and the exported model card repeat this text)."""
        return hide_passwords(yaml.safe_dump(self.raw, sort_keys=False))


SPEC_KEYS = (
    *SearchSpec.model_fields,
    *Sources.model_fields,
    *Objective.model_fields,
    "task",
    *Split.model_fields,
    *SamplerSpec.model_fields,
    *PrunerSpec.model_fields,
    *Budget.model_fields,
    *Heartbeat.model_fields,
    *Granularity.model_fields,
    *SliceSpec.model_fields,
)


# --------------------------------------------------------------------------- loading

REQUIRED_HINTS = {
    "objectives": "; list at least one objective (name, evaluator, task, metric, weight)",
    "sources": "; give base: and models: {name: path-or-hub-id}",
    "methods": "; list one or more merge methods, e.g. [ties, linear]",
    "metric": ", e.g. metric: exact_match,strip",
}


def first_message(err: ValidationError, *, with_loc: bool = False) -> str:
    errors = err.errors()
    # a misspelt key also makes the real one "missing": the spelling is the error to report
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    kind, msg = first["type"], first["msg"]
    msg = msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(first["loc"][-1])
        msg = f"unknown key{did_you_mean(key, SPEC_KEYS)}"
        if not with_loc:
            msg = f"unknown key {key!r}{did_you_mean(key, SPEC_KEYS)}"
    elif kind == "missing":
        msg = "is required" + REQUIRED_HINTS.get(str(first["loc"][-1]), "")
    elif kind.startswith("literal_error"):
        msg = f"{first.get('input')!r} is not allowed; {msg.lower()}"
    elif kind.endswith(("_type", "_parsing")):  # a wrong type: show what was given
        msg = f"{msg}, got {first.get('input')!r}"
    if with_loc and loc:
        return f"{loc}: {msg}"
    return msg
