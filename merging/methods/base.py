"""The contract every merge method fulfils, and the registry from YAML name to method.

A method is a pure function over tensors of one output tensor. The engine resolves parameters
(precedence, gradients, filters), casts inputs to the compute dtype and hands the function:

- ``inputs``: the non-base tensors, in the order the config lists the models (for ``linear``
  and ``passthrough`` every listed model, base included, because there the base is just an input),
- ``base``: the base tensor, or ``None`` when the method takes no base or none was given,
- ``per_model``: one dict per input with that model's resolved per-model parameters
  (defaults filled in),
- ``params``: the resolved global parameters (defaults filled in),
- ``generator``: the tensor's uniform stream (``draws.Draws``), seeded from (seed, tensor name),
  for random methods.

Adding a method is adding one module that calls ``register``: no if-chain anywhere knows names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import torch

from mergesearch.merging.errors import ConfigError, did_you_mean
from mergesearch.merging.methods.draws import Draws


class BaseRole(str, Enum):
    """What a method does with ``base_model``."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    IGNORED = "ignored"  # a listed base is treated as one more input


class Required:
    """Marker default: the parameter has no default and must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = Required()


class MergeFunction(Protocol):
    def __call__(
        self,
        inputs: list[torch.Tensor],
        base: torch.Tensor | None,
        per_model: list[dict[str, float]],
        params: Mapping[str, Any],
        generator: Draws | None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its function plus what the config validator must know about it."""

    name: str
    fn: MergeFunction
    base: BaseRole
    per_model_params: Mapping[str, Any] = field(default_factory=dict)
    global_params: Mapping[str, Any] = field(default_factory=dict)
    min_inputs: int = 1  # non-base models (all models for linear/passthrough)
    max_inputs: int | None = None
    uses_randomness: bool = False
    # one line for model cards and reports: what the method does to the tensors
    description: str = ""
    # where the method comes from (an arXiv abstract URL, empty when it has none), linked from
    # model cards
    paper: str = ""
    # the output's layers are the inputs' layers stacked (passthrough): depth can change, no
    # tensor arithmetic happens, and a search picks slices instead of parameters
    stacks_layers: bool = False
    # what the base model is to this method, as a model card names it: most methods build on
    # the base (task vectors are relative to it); for an interpolation it is the t=0 end
    base_name: str = "base"
    # each output element depends only on the inputs' elements at the same position (no
    # whole-tensor statistic, no random draws): the engine may merge a large tensor in parts
    # of rows, holding a part of each input instead of the whole tensors
    elementwise: bool = False
    # the result may take the base's memory (``buffers.empty_like(..., reuse=base)``): the
    # method reads each block of the base before it writes that block of the result
    result_in_base: bool = False
    # the method reads its inputs and base only as flat blocks (``t.reshape(-1)[start:stop]``,
    # plus numel, dtype and shape): the engine may hand it sources that read each block from
    # disk when asked (``merging.streamed``) instead of whole tensors; or a function of a
    # tensor's global parameters, for a method whose layout depends on one (nuslerp's flatten)
    flat_blocks: bool | Callable[[Mapping[str, Any]], bool] = False

    def reads_flat_blocks(self, params: Mapping[str, Any]) -> bool:
        """Whether a tensor merged with ``params`` may get streamed sources (``flat_blocks``)."""
        return self.flat_blocks(params) if callable(self.flat_blocks) else self.flat_blocks


METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """Look a method up by its YAML name; unknown names list the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ConfigError(
            f"unknown merge_method {name!r}{did_you_mean(name, METHODS)}; choose one of: {known}"
        ) from None
