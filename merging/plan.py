"""Config + checkpoint headers -> a plan: one job per output tensor, parameters resolved.

Everything that can be wrong with a merge is found here, before a single tensor is read: missing
models, depths, layer ranges, shapes, vocabularies, required or out-of-range parameters. The
executor then only reads, computes and writes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from mergesearch.merging.architecture import (
    DEPTH_KEYS,
    is_pre_layer,
    layer_suffixes,
    parse_layer_name,
)
from mergesearch.merging.checkpoint import Checkpoint, CheckpointSet, check_dtypes_agree
from mergesearch.merging.config import InputModel, MergeConfig, Slice
from mergesearch.merging.domains import domain_problem
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.methods import METHODS, REQUIRED, BaseRole, MergeMethod
from mergesearch.merging.parameters import LayerPosition, is_missing, resolve_parameter

DTYPE_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NAME_BY_DTYPE = {v: k for k, v in DTYPE_BY_NAME.items()}
# a tied lm_head that a checkpoint leaves out is its input embedding
TIED_FALLBACKS = {
    "lm_head.weight": ("model.embed_tokens.weight", "transformer.wte.weight"),
    "embed_out.weight": ("gpt_neox.embed_in.weight",),
}


@dataclass(frozen=True)
class TensorRef:
    model: str  # the model reference as written in the config
    name: str  # tensor name inside that checkpoint
    rows: int | None = None  # keep only the first rows (vocabulary chosen by tokenizer_source)


@dataclass
class TensorJob:
    out_name: str
    shape: tuple[int, ...]
    inputs: list[TensorRef]
    base: TensorRef | None
    per_model: list[dict[str, Any]]
    params: dict[str, Any]
    mergeable: bool = True  # False: integer/bool buffers, copied from the first input as is


@dataclass
class MergePlan:
    method: MergeMethod
    jobs: list[TensorJob]
    out_config: dict[str, Any]
    reference: Checkpoint  # model whose config the output inherits
    tokenizer_model: Checkpoint
    compute_dtype: torch.dtype | None
    out_dtype: torch.dtype
    model_refs: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        size = torch.tensor([], dtype=self.out_dtype).element_size()
        return sum(size * _numel(job.shape) for job in self.jobs)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _explicit_slices(config: MergeConfig, checkpoints: CheckpointSet) -> list[Slice]:
    """The slices form as is; the models form as one slice over every layer of every model."""
    if config.slices is not None:
        for i, sl in enumerate(config.slices):
            for j, src in enumerate(sl.sources):
                depth = checkpoints.get(src.model).num_layers
                start, end = src.layer_range  # type: ignore[misc]
                if end > depth:
                    raise ConfigError(
                        f"{config.source_name}: slices[{i}].sources[{j}].layer_range: [{start}, {end}] "
                        f"goes beyond {src.model!r}, which has {depth} layers (end <= {depth})"
                    )
        return list(config.slices)
    assert config.models is not None
    sources = list(config.models)
    if config.base_model and config.base_model not in [m.model for m in sources]:
        sources.append(InputModel(model=config.base_model))
    depths = {m.model: checkpoints.get(m.model).num_layers for m in sources}
    if len(set(depths.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in depths.items())
        raise ConfigError(
            f"{config.source_name}: models have different depths ({listed}); "
            "use the slices form with layer_range"
        )
    return [
        Slice(
            tuple(InputModel(m.model, m.parameters, (0, depths[m.model])) for m in sources),
            {},
        )
    ]


@dataclass
class _SliceRoles:
    sources: list[InputModel]  # role "input" for the method
    base: InputModel | None
    reference: InputModel  # names and shapes come from here


def _roles(sl: Slice, method: MergeMethod, config: MergeConfig, index: int) -> _SliceRoles:
    by_ref = {s.model: s for s in sl.sources}
    base = by_ref.get(config.base_model) if config.base_model else None
    if method.base == BaseRole.IGNORED:
        inputs = list(sl.sources)
        base = None
    else:
        if method.base == BaseRole.REQUIRED and base is None:
            raise ConfigError(
                f"{config.source_name}: slices[{index}].sources: base_model {config.base_model!r} "
                f"must be one of the slice's sources for merge_method {method.name!r}"
            )
        inputs = [s for s in sl.sources if s.model != config.base_model]
    return _SliceRoles(inputs, base, base or sl.sources[0])


class _Planner:
    def __init__(self, config: MergeConfig, checkpoints: CheckpointSet):
        self.config = config
        self.checkpoints = checkpoints
        self.method = METHODS[config.merge_method]
        self.where = config.source_name

    # -- parameters ----------------------------------------------------------------------------

    def _checked(self, key: str, value: Any, default: Any, context: str) -> Any:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(
                    f"{self.where}: {context}: {key} must be true or false, got {value!r}"
                )
            return value
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.where}: {context}: {key} must be a number, got {value!r}")
        problem = domain_problem(key, value)
        if problem is not None:
            raise ConfigError(f"{self.where}: {context}: {problem}")
        return float(value)

    def _resolve(
        self,
        table: dict[str, Any],
        levels: list[dict],
        tensor_name: str,
        position: LayerPosition,
        context: str,
    ) -> dict[str, Any]:
        out = {}
        for key, default in table.items():
            value = resolve_parameter(key, levels, tensor_name, position)
            if is_missing(value):
                if default is REQUIRED:
                    raise ConfigError(
                        f"{self.where}: {context}: tensor {tensor_name!r} has no value for "
                        f"required parameter {key!r} of merge_method {self.method.name!r}"
                    )
                value = default
            out[key] = self._checked(key, value, default, context)
        return out

    # -- jobs ----------------------------------------------------------------------------------

    def _job(
        self,
        out_name: str,
        in_names: dict[str, str],
        roles: _SliceRoles,
        sl: Slice,
        position: LayerPosition,
    ) -> TensorJob:
        ref_ckpt = self.checkpoints.get(roles.reference.model)
        ref_name = in_names[roles.reference.model]
        info = ref_ckpt.tensors[ref_name]
        refs = {}
        shapes = {}
        sources: list[tuple[str, Checkpoint, str]] = []
        for src in roles.sources + ([roles.base] if roles.base else []):
            ckpt = self.checkpoints.get(src.model)
            name = in_names[src.model]
            if name not in ckpt and ckpt.tie_word_embeddings:
                name = next((f for f in TIED_FALLBACKS.get(name, ()) if f in ckpt), name)
            if name not in ckpt:
                raise ConfigError(
                    f"{self.where}: tensor {in_names[src.model]!r} is missing from {src.model!r}; "
                    "are the models the same architecture?"
                )
            refs[src.model] = name
            shapes[src.model] = ckpt.tensors[name].shape
            sources.append((src.model, ckpt, name))
        check_dtypes_agree(out_name, sources)
        rows = self._vocabulary_rows(out_name, shapes)
        shape = info.shape if rows is None else (rows, *info.shape[1:])
        if rows is None and len(set(shapes.values())) > 1:
            listed = ", ".join(f"{m}: {list(s)}" for m, s in shapes.items())
            raise ConfigError(
                f"{self.where}: tensor {out_name!r} has different shapes ({listed}); "
                "only models of one architecture and size can be merged"
            )
        mergeable = info.dtype.is_floating_point
        per_model = [
            self._resolve(
                self.method.per_model_params,
                [src.parameters, sl.parameters, self.config.parameters],
                refs[src.model],
                position,
                f"model {src.model!r}",
            )
            for src in roles.sources
        ]
        params = self._resolve(
            self.method.global_params,
            [sl.parameters, self.config.parameters],
            out_name,
            position,
            "parameters",
        )
        return TensorJob(
            out_name=out_name,
            shape=tuple(shape),
            inputs=[TensorRef(s.model, refs[s.model], rows) for s in roles.sources],
            base=TensorRef(roles.base.model, refs[roles.base.model], rows) if roles.base else None,
            per_model=per_model,
            params=params,
            mergeable=mergeable,
        )

    def _vocabulary_rows(self, out_name: str, shapes: dict[str, tuple[int, ...]]) -> int | None:
        """Rows to keep when embedding-like tensors differ only in vocabulary size."""
        if len(set(shapes.values())) <= 1 or not _is_vocab_tensor(out_name):
            return None
        tails = {s[1:] for s in shapes.values()}
        if len(tails) > 1:
            return None  # a real shape mismatch, reported by the caller
        sizes = {m: s[0] for m, s in shapes.items()}
        listed = ", ".join(f"{m}: {n}" for m, n in sizes.items())
        chosen = self._tokenizer_source()
        if chosen is None:
            raise ConfigError(
                f"{self.where}: models have different vocabulary sizes ({listed}) in "
                f"{out_name!r}; set tokenizer_source to the model whose tokenizer the merge "
                "should use"
            )
        rows = self.checkpoints.get(chosen).tensors.get(out_name)
        target = rows.shape[0] if rows is not None else min(sizes.values())
        if any(n < target for n in sizes.values()):
            raise ConfigError(
                f"{self.where}: tokenizer_source {chosen!r} has {target} vocabulary rows but "
                f"some models have fewer ({listed}); choose the model with the smallest vocabulary"
            )
        return target

    def _tokenizer_source(self) -> str | None:
        src = self.config.tokenizer_source
        if src == "base":
            return self.config.base_model or self.config.model_refs[0]
        return src

    # -- whole plan ----------------------------------------------------------------------------

    def _check_architectures(self) -> None:
        """Models of different ``model_type`` can share tensor names and shapes (Llama and
        Mistral do), so shapes alone would let such a merge through and produce nonsense."""
        kinds = {
            ref: self.checkpoints.get(ref).config.get("model_type")
            for ref in self.config.model_refs
        }
        if len(set(kinds.values())) > 1:
            listed = ", ".join(f"{ref}: {kind}" for ref, kind in kinds.items())
            raise ConfigError(
                f"{self.where}: models are of different architectures ({listed}); merge models "
                "of one architecture (model_type in config.json)"
            )

    def build(self) -> MergePlan:
        slices = _explicit_slices(self.config, self.checkpoints)
        self._check_architectures()
        roles = [_roles(sl, self.method, self.config, i) for i, sl in enumerate(slices)]
        jobs: list[TensorJob] = []
        out_layers: list[tuple[int, int]] = []  # (slice index, reference layer) per output layer

        first, last = roles[0], roles[-1]
        first_names = self.checkpoints.get(first.reference.model).names
        pre = [n for n in first_names if parse_layer_name(n) is None and is_pre_layer(n)]
        for name in pre:
            jobs.append(
                self._job(
                    name,
                    {s.model: name for s in slices[0].sources},
                    first,
                    slices[0],
                    LayerPosition(),
                )
            )

        for k, (sl, role) in enumerate(zip(slices, roles, strict=True)):
            ref_ckpt = self.checkpoints.get(role.reference.model)
            start = role.reference.layer_range[0]  # type: ignore[index]
            count = role.reference.layer_range[1] - start  # type: ignore[index]
            for i in range(count):
                out_index = len(out_layers)
                out_layers.append((k, start + i))
                for prefix, suffix in layer_suffixes(ref_ckpt.names, start + i):
                    in_names = {
                        s.model: f"{prefix}.{s.layer_range[0] + i}.{suffix}"  # type: ignore[index]
                        for s in sl.sources
                    }
                    jobs.append(
                        self._job(
                            f"{prefix}.{out_index}.{suffix}",
                            in_names,
                            role,
                            sl,
                            LayerPosition(i, count),
                        )
                    )

        last_names = self.checkpoints.get(last.reference.model).names
        post = [n for n in last_names if parse_layer_name(n) is None and not is_pre_layer(n)]
        for name in post:
            jobs.append(
                self._job(
                    name,
                    {s.model: name for s in slices[-1].sources},
                    last,
                    slices[-1],
                    LayerPosition(),
                )
            )

        reference = self.checkpoints.get(self.config.base_model or self.config.model_refs[0])
        out_dtype = self._out_dtype(reference)
        tokenizer_ref = self._tokenizer_source() or reference.ref
        return MergePlan(
            method=self.method,
            jobs=jobs,
            out_config=_output_config(
                reference, out_layers, slices, roles, self.checkpoints, out_dtype
            ),
            reference=reference,
            tokenizer_model=self.checkpoints.get(tokenizer_ref),
            compute_dtype=DTYPE_BY_NAME.get(self.config.dtype or ""),
            out_dtype=out_dtype,
            model_refs=self.config.model_refs,
        )

    def _out_dtype(self, reference: Checkpoint) -> torch.dtype:
        name = self.config.out_dtype or self.config.dtype
        if name:
            return DTYPE_BY_NAME[name]
        floats = [i.dtype for i in reference.tensors.values() if i.dtype.is_floating_point]
        return floats[0] if floats else torch.float32


def _is_vocab_tensor(name: str) -> bool:
    return is_pre_layer(name) or name in TIED_FALLBACKS


def _output_config(
    reference: Checkpoint,
    out_layers: list[tuple[int, int]],
    slices: list[Slice],
    roles: list[_SliceRoles],
    checkpoints: CheckpointSet,
    out_dtype: torch.dtype,
) -> dict[str, Any]:
    """The reference model's config with the new depth, per-layer lists remapped and the dtype."""
    config = copy.deepcopy(reference.config)
    depth_in = reference.num_layers
    for key in DEPTH_KEYS:
        if key in config:
            config[key] = len(out_layers)
    for key, value in list(config.items()):
        if isinstance(value, list) and len(value) == depth_in:  # e.g. layer_types
            per_slice = [checkpoints.get(r.reference.model).config.get(key, value) for r in roles]
            config[key] = [per_slice[k][layer] for k, layer in out_layers]
    dtype_name = NAME_BY_DTYPE.get(out_dtype, "float32")
    config["dtype"] = dtype_name
    config.pop("torch_dtype", None)
    return config
