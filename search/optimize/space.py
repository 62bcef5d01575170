"""From a search spec to Optuna parameters, and from parameters to a plain merge config.

The search space has a **fixed shape**: every trial suggests every parameter, whichever method
it picks, and a method ignores the parameters it does not take. CMA-ES and GP need that (they
model the intersection of the parameters seen in all trials), multivariate TPE does best with it,
and identical merges that differ only in an ignored parameter are caught by config de-duplication
in ``search.objective``.

Parameter names (stable: reports and exports read them):
- ``method`` when several methods are searched;
- ``<param>`` for a global parameter (``lambda``), ``<param>.<model>`` for a per-model one
  (``weight.rev``); a method-specific override is prefixed with the method (``ties.lambda``);
- ``....g<k>`` for the k-th layer-group anchor (a mergekit gradient list);
- ``....<filter>...`` per tensor-name filter (``weight.rev.mlp.g0``), ``....rest`` for tensors no
  filter matches;
- ``<method>.slice<i>.source|start|length`` for the searched slices of a method that stacks
  layers (``passthrough.slice0.start``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mergesearch import merging
from mergesearch.merging.methods import BaseRole
from mergesearch.search.optimize.ranges import middle
from mergesearch.search.spec.schema import SearchSpec
from mergesearch.search.spec.values import Fixed, PerModel, Range

SIGNIFICANT_DIGITS = 4  # searched floats enter configs rounded: readable YAML, same merges


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "f"


@dataclass(frozen=True)
class Template:
    """How one config value is built from trial parameters.

    Either ``fixed`` (nothing searched), or ``anchors`` (1 name: a scalar; K names: a gradient),
    or per-filter anchors plus a ``rest`` scalar for tensors no filter matches.
    """

    fixed: Any = None
    anchors: tuple[str, ...] = ()
    filtered: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rest: str | None = None

    def render(self, params: Mapping[str, Any]) -> Any:
        if self.filtered:
            entries = [
                {"filter": flt, "value": _gradient(names, params)} for flt, names in self.filtered
            ]
            return [*entries, {"value": _value(params[self.rest])}]  # type: ignore[index]
        if self.anchors:
            return _gradient(self.anchors, params)
        return list(self.fixed) if isinstance(self.fixed, tuple) else self.fixed


def _value(value: Any) -> Any:
    return _round(value) if isinstance(value, float) else value


def _gradient(names: tuple[str, ...], params: Mapping[str, Any]) -> Any:
    values = [_value(params[n]) for n in names]
    return values[0] if len(values) == 1 else values


def _distribution(rng: Range) -> BaseDistribution:
    if rng.choices is not None:
        return CategoricalDistribution(list(rng.choices))
    if rng.integer:
        return IntDistribution(int(rng.low), int(rng.high), log=rng.log, step=int(rng.step or 1))
    return FloatDistribution(rng.low, rng.high, log=rng.log, step=rng.step)


class SearchSpace:
    """The Optuna distributions of a spec, and the map from parameters to a merge config.

    ``num_layers`` (source name -> depth) lets passthrough slices be clamped to the model; it is
    only needed to build configs, not to validate a spec.
    """

    def __init__(self, spec: SearchSpec, num_layers: Mapping[str, int] | None = None):
        self.spec = spec
        self.num_layers = dict(num_layers or {})
        self.methods = list(spec.methods)
        self.distributions: dict[str, BaseDistribution] = {}
        # method -> global param -> template; method -> model -> param -> template
        self._globals: dict[str, dict[str, Template]] = {}
        self._per_model: dict[str, dict[str, dict[str, Template]]] = {}
        self.used: dict[str, list[str]] = {}  # method -> the parameters it reads
        if len(self.methods) > 1:
            self.distributions["method"] = CategoricalDistribution(self.methods)
        for name in self.methods:
            self._add_method(name)

    # ------------------------------------------------------------------ building the space

    def _add_method(self, name: str) -> None:
        spec, method = self.spec, merging.METHODS[name]
        self._method = name
        self.used[name] = []
        override = spec.methods[name]
        if method.stacks_layers:  # searched by its slices, not by parameters
            for i, sl in enumerate(override.slices):
                for key in ("source", "start", "length"):
                    value = getattr(sl, key)
                    if isinstance(value, Range):
                        self._dim(f"{name}.slice{i}.{key}", value)
            return
        self._globals[name] = {}
        self._per_model[name] = {m: {} for m in self.inputs(name)}
        for param in method.global_params:
            where, value = self._lookup(name, param)
            if value is not None:
                self._globals[name][param] = self._template(where, param, None, value)
        for param in method.per_model_params:
            where, value = self._lookup(name, param)
            if value is None:
                continue
            for model in self.inputs(name):
                item = value.values.get(model) if isinstance(value, PerModel) else value
                if item is not None:
                    self._per_model[name][model][param] = self._template(where, param, model, item)

    def _lookup(self, method: str, param: str) -> tuple[str, Any]:
        override = self.spec.methods[method].parameters
        if param in override:
            return f"{method}.", override[param]
        return "", self.spec.parameters.get(param)

    def _template(self, prefix: str, param: str, model: str | None, value: Any) -> Template:
        if isinstance(value, Fixed):
            return Template(fixed=value.value)
        base = f"{prefix}{param}" + (f".{model}" if model else "")
        if value.choices is not None:
            return Template(anchors=(self._dim(base, value),))
        groups = value.layer_groups or self.spec.granularity.layer_groups
        filters = self.spec.granularity.filters if value.filters is None else value.filters

        def anchors(stem: str) -> tuple[str, ...]:
            if groups == 1:
                return (self._dim(stem, value),)
            return tuple(self._dim(f"{stem}.g{k}", value) for k in range(groups))

        if not filters:
            return Template(anchors=anchors(base))
        filtered = tuple((flt, anchors(f"{base}.{_slug(flt)}")) for flt in filters)
        return Template(filtered=filtered, rest=self._dim(f"{base}.rest", value))

    def _dim(self, name: str, value: Range) -> str:
        self.distributions.setdefault(name, _distribution(value))
        if name not in self.used[self._method]:
            self.used[self._method].append(name)
        return name

    def inputs(self, method_name: str) -> list[str]:
        """Source names a method takes as inputs (besides the base), in spec order."""
        names = list(self.spec.sources.models)
        method = merging.METHODS[method_name]
        if method.base == BaseRole.REQUIRED and not self.spec.sources.base:
            return names[1:]  # the first model serves as base (e.g. slerp between two models)
        return names

    def base_of(self, method_name: str) -> str | None:
        method = merging.METHODS[method_name]
        if method.base == BaseRole.IGNORED:
            return None
        if self.spec.sources.base:
            return self.spec.sources.base_name
        return next(iter(self.spec.sources.models)) if method.base == BaseRole.REQUIRED else None

    # ------------------------------------------------------------------ trials and configs

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every parameter of the space (fixed shape) and return them."""
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return dict(trial.params)

    def default_point(self, method: str) -> dict[str, Any]:
        """Where a method usually works, as values of the parameters it reads: the method's
        own default where it has one inside the searched range, else the middle of the range.

        Models' weights, which have no default, are equal and sum to one (as far as the range
        allows): the plain average of the models, and for the task-arithmetic family, which
        does not normalise, the average of their task vectors. The middle of the range would
        scale three task vectors by 1.65 at weights in [0.1, 1]: far past where such merges
        work, so a method compared early on its default point would look worse than it is."""
        defaults = {
            **merging.METHODS[method].per_model_params,
            **merging.METHODS[method].global_params,
        }
        if not isinstance(defaults.get("weight"), int | float):
            defaults["weight"] = 1 / max(len(self.inputs(method)), 1)
        point: dict[str, Any] = {}
        for name in self.used[method]:
            dist = self.distributions[name]
            param = name.removeprefix(f"{method}.").split(".")[0]
            default = defaults.get(param)
            if isinstance(dist, CategoricalDistribution):
                point[name] = default if default in dist.choices else dist.choices[0]
            elif isinstance(default, int | float) and not isinstance(default, bool):
                point[name] = min(max(default, dist.low), dist.high)  # type: ignore[attr-defined]
                if isinstance(dist, IntDistribution):
                    point[name] = int(point[name])
            else:
                point[name] = middle(dist)
        return point

    def method_of(self, params: Mapping[str, Any]) -> str:
        return params.get("method", self.methods[0])

    def config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The mergekit config (plain dict) a point of the space stands for."""
        method = self.method_of(params)
        if merging.METHODS[method].stacks_layers:
            return self._slices_config(method, params)
        sources = self.spec.sources
        models = []
        for model in self.inputs(method):
            values = {p: t.render(params) for p, t in self._per_model[method][model].items()}
            models.append(
                {"model": sources.path(model), **({"parameters": values} if values else {})}
            )
        config: dict[str, Any] = {"models": models, "merge_method": method}
        base = self.base_of(method)
        if base:
            config["base_model"] = sources.path(base)
        globals_ = {p: t.render(params) for p, t in self._globals[method].items()}
        if globals_:
            config["parameters"] = globals_
        return self._finish(config, method)

    def _slices_config(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        slices = []
        for i, sl in enumerate(self.spec.methods[method].slices):
            picked = {}
            for key in ("source", "start", "length"):
                value = getattr(sl, key)
                picked[key] = (
                    params[f"{method}.slice{i}.{key}"] if isinstance(value, Range) else value.value
                )
            source, start, length = picked["source"], int(picked["start"]), int(picked["length"])
            depth = self.num_layers.get(source)
            if depth is not None:  # keep every searched slice inside its model
                start = min(start, depth - 1)
                length = min(length, depth - start)
            layer_range = [start, start + length]
            slices.append(
                {"sources": [{"model": self.spec.sources.path(source), "layer_range": layer_range}]}
            )
        return self._finish({"slices": slices, "merge_method": method}, method)

    def _finish(self, config: dict[str, Any], method: str) -> dict[str, Any]:
        config["dtype"] = self.spec.dtype
        if merging.METHODS[method].uses_randomness:
            config["seed"] = self.spec.seed
        return config

    def baselines(self) -> dict[str, dict[str, Any]]:
        """Configs that show where the sources stand: each source alone, then their average."""
        sources = self.spec.sources
        out = {}
        for name in sources.names():
            out[name] = {
                "models": [{"model": sources.path(name)}],
                "merge_method": "passthrough",
                "dtype": self.spec.dtype,
            }
        if len(sources.models) > 1:
            out["average"] = {
                "models": [
                    {"model": path, "parameters": {"weight": 1.0}}
                    for path in sources.models.values()
                ],
                "merge_method": "linear",
                "dtype": self.spec.dtype,
            }
        return out

    def fingerprint(self) -> dict[str, str]:
        """A comparable description of the space, stored in the study to guard resumes."""
        return {name: repr(dist) for name, dist in sorted(self.distributions.items())}
