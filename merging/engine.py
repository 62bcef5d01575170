"""Execute a plan into a sink: read each input once, compute, hand the result over, forget it.

One ``Merger`` per process: it keeps checkpoints open and a bounded cache of source tensors, so a
search that merges the same sources trial after trial reads them from disk once. Both sinks run
through ``_execute``: a search candidate and an exported model are made by the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergesearch.merging.checkpoint import CheckpointSet
from mergesearch.merging.config import MergeConfig, load_merge_config
from mergesearch.merging.errors import ConfigError, MergeRuntimeError
from mergesearch.merging.outputs import check_output, existing_file, source_models
from mergesearch.merging.plan import MergePlan, TensorJob, TensorRef, _Planner
from mergesearch.merging.runtime import release_freed_memory, single_threaded_ops, tune_allocator
from mergesearch.merging.sinks import DiskSink, ModelSink, TensorSink, nbytes, parse_size

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
DEFAULT_SHARD_SIZE = "5G"
PLAN_CACHE_SIZE = 8  # a search alternates few configs; plans hold only names and parameters
PREFETCH_JOBS = 2  # jobs read ahead beyond those being computed


class NonFiniteError(MergeRuntimeError):
    """A merged tensor holds NaN or inf: the candidate is unusable (a search fails the trial)."""


@dataclass
class MergeStats:
    seconds: float
    tensors: int
    bytes_written: int


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed from (seed, tensor name): same masks whatever the order or threads."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _TensorCache:
    """LRU of source tensors by (model, name) whose bound also covers the jobs in flight.

    The executor ``reserve``s the bytes of every job it starts (inputs, dtype copies, result)
    and ``release``s them when the result has been handed over; the cache keeps
    ``bytes + reserved <= max_bytes`` by evicting its oldest entries, so the source tensors and
    results the engine holds never exceed the bound, whether cached or in flight (a job that
    alone exceeds it runs alone). Inputs that are also cached count twice: the bound errs on
    the safe side. ``max_bytes`` 0 disables both (a streaming merge holds a few jobs).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.reserved = 0
        self.high_water = 0  # the most bytes + reserved ever reached after eviction
        self._items: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the reader thread puts, the executor reserves

    def get(self, key: tuple[str, str]) -> torch.Tensor | None:
        with self._lock:
            tensor = self._items.get(key)
            if tensor is not None:
                self._items.move_to_end(key)
            return tensor

    def put(self, key: tuple[str, str], tensor: torch.Tensor) -> None:
        size = tensor.nbytes
        with self._lock:
            if key in self._items or size + self.reserved > self.max_bytes:
                return
            self._items[key] = tensor
            self.bytes += size
            self._shrink()

    def has_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more can be reserved without passing the bound."""
        return self.reserved + nbytes <= self.max_bytes

    def reserve(self, nbytes: int) -> None:
        with self._lock:
            self.reserved += nbytes
            self._shrink()

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.reserved -= nbytes

    def _shrink(self) -> None:
        while self._items and self.bytes + self.reserved > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes
        self.high_water = max(self.high_water, self.bytes + self.reserved)


class Merger:
    """Plans and executes merges; keep one per process to reuse open checkpoints and the cache."""

    def __init__(
        self,
        *,
        cache_bytes: int = 2 * 2**30,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        threads: int | None = None,
    ):
        self.checkpoints = CheckpointSet(allow_pickle=allow_pickle)
        self.cache = _TensorCache(cache_bytes)
        self.trust_remote_code = trust_remote_code
        # tensors computed at once (None: torch's thread count when a merge starts)
        self.threads = threads
        # A streaming merge recycles blocks of a few sizes: worth a heap that keeps them. A
        # cache evicts tensors of every size, and such a heap would keep their holes.
        if cache_bytes == 0:
            tune_allocator()
        else:
            release_freed_memory()
        self._plans: OrderedDict[str, MergePlan] = OrderedDict()

    # -- planning ------------------------------------------------------------------------------

    def plan(self, config: MergeConfig | dict | str | Path) -> MergePlan:
        config = _as_config(config)
        key = config.to_yaml()
        plan = self._plans.get(key)
        if plan is None:
            plan = _Planner(config, self.checkpoints).build()
            self._plans[key] = plan
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def close(self) -> None:
        """Close the open checkpoint files (they reopen on demand)."""
        self.checkpoints.close()

    def output_config(self, config: MergeConfig | dict | str | Path) -> Any:
        """The merged model's ``transformers`` config (depth after slices, saved dtype)."""
        from transformers import AutoConfig

        data = dict(self.plan(config).out_config)
        model_type = data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)

    def new_model(self, config: MergeConfig | dict | str | Path) -> torch.nn.Module:
        """An empty model of the merged architecture, to be filled by ``merge_into``."""
        from transformers import AutoModelForCausalLM

        out_config = self.output_config(config)
        model = AutoModelForCausalLM.from_config(
            out_config, trust_remote_code=self.trust_remote_code, dtype=self.plan(config).out_dtype
        )
        return model.eval()

    def load_tokenizer(self, config: MergeConfig | dict | str | Path) -> Any:
        from transformers import AutoTokenizer

        folder = self.plan(config).tokenizer_model.folder
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=self.trust_remote_code)

    # -- execution -----------------------------------------------------------------------------

    def merge_into(
        self,
        config: MergeConfig | dict | str | Path,
        model: torch.nn.Module,
        *,
        seed: int | None = None,
        progress: bool = False,
        check_finite: bool = True,
    ) -> MergeStats:
        """Write the merged tensors into ``model`` in place (no files): the search's path."""
        config = _as_config(config)
        sink = ModelSink(model)
        stats = self._execute(self.plan(config), sink, _seed(config, seed), progress, check_finite)
        sink.close()
        return stats

    def merge_to_disk(
        self,
        config: MergeConfig | dict | str | Path,
        out_dir: str | Path,
        *,
        seed: int | None = None,
        shard_size: str | int = DEFAULT_SHARD_SIZE,
        copy_tokenizer: bool = True,
        overwrite: bool = False,
        progress: bool = True,
        check_finite: bool = True,
    ) -> Path:
        """A complete Hugging Face folder at ``out_dir``, or nothing there at all.

        A merged tensor holding NaN or inf stops the merge (a NaN written to disk is found
        only when someone evaluates the model): ``ConfigError`` when a source tensor is
        already non-finite (a damaged checkpoint: bad input), else ``NonFiniteError``
        (parameters that overflow). ``check_finite=False`` writes whatever comes out.
        """
        config = _as_config(config)
        plan = self.plan(config)
        out_dir = Path(out_dir).absolute()
        _check_output(out_dir, plan, config, self.checkpoints)
        entries = [(job.out_name, job.shape, self._out_dtype(plan, job)) for job in plan.jobs]
        sink = DiskSink(out_dir, entries, shard_size=parse_size(shard_size), overwrite=overwrite)
        try:
            try:
                self._execute(plan, sink, _seed(config, seed), progress, check_finite)
            except NonFiniteError:
                self._refuse_damaged_sources(plan)
                raise
            _write_metadata(sink.folder, plan, config, copy_tokenizer)
            return sink.finish()
        except OSError as err:
            raise MergeRuntimeError(
                f"{out_dir}: writing failed ({err.strerror or err}); nothing was left behind"
            ) from None
        finally:
            sink.close()

    def _refuse_damaged_sources(self, plan: MergePlan) -> None:
        """``ConfigError`` naming the first source tensor that holds NaN or inf, if any.

        Run only after a merge produced a non-finite tensor, so the scan costs nothing when
        merges succeed; it tells a damaged checkpoint (exit 2) from overflowing parameters.
        """
        for ref in plan.model_refs:
            checkpoint = self.checkpoints.get(ref)
            for name in checkpoint.names:
                if not _finite(checkpoint.get(name)):
                    raise ConfigError(
                        f"{checkpoint.folder}: tensor {name!r} holds NaN or inf; the checkpoint "
                        "is damaged: re-download or re-save it, or leave this model out"
                    )

    def _out_dtype(self, plan: MergePlan, job: TensorJob) -> torch.dtype:
        if not job.mergeable:
            ref = job.base or job.inputs[0]
            return self.checkpoints.get(ref.model).tensors[ref.name].dtype
        return plan.out_dtype

    def _job_bytes(self, plan: MergePlan, job: TensorJob) -> int:
        """What a job holds while in flight: its inputs, their compute-dtype copies, its result."""
        refs = [*job.inputs, *([job.base] if job.base is not None else [])]
        total = nbytes(job.shape, plan.out_dtype) if job.mergeable else 0
        compute = plan.compute_dtype if job.mergeable else None
        for ref in refs:
            info = self.checkpoints.get(ref.model).tensors[ref.name]
            if info.dtype is not None:
                total += nbytes(info.shape, info.dtype)
            if compute is not None and compute != info.dtype:
                total += nbytes(info.shape, compute)
        return total

    def _read(self, ref: TensorRef) -> torch.Tensor:
        key = (ref.model, ref.name)
        tensor = self.cache.get(key)
        if tensor is None:
            tensor = self.checkpoints.get(ref.model).get(ref.name)
            self.cache.put(key, tensor)
        return tensor[: ref.rows] if ref.rows is not None else tensor

    def _read_job(self, job: TensorJob) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        return [self._read(r) for r in job.inputs], (self._read(job.base) if job.base else None)

    def _execute(
        self, plan: MergePlan, sink: TensorSink, seed: int, progress: bool, check_finite: bool
    ) -> MergeStats:
        """Run every job; results reach the sink in plan order.

        Three kinds of threads overlap: one reads inputs ahead (``preadv`` releases the GIL),
        ``threads`` workers compute one tensor each with single-threaded torch ops (see
        ``runtime``), and the disk sink writes behind. At most ``workers + PREFETCH_JOBS`` jobs
        are in flight, which bounds memory to a few tensors.
        """
        start = time.perf_counter()
        written = 0
        workers = max(1, self.threads or torch.get_num_threads())
        bar = tqdm(
            total=len(plan.jobs),
            desc=f"merge ({plan.method.name})",
            unit="tensor",
            disable=not progress,
            leave=False,
        )
        # with a cache, the jobs in flight count against its bound (see _TensorCache)
        budgeted = self.cache.max_bytes > 0
        costs = [self._job_bytes(plan, job) if budgeted else 0 for job in plan.jobs]
        with (
            single_threaded_ops(),
            ThreadPoolExecutor(1, thread_name_prefix="prefetch") as reader,
            ThreadPoolExecutor(workers, thread_name_prefix="merge") as pool,
        ):
            in_flight: deque[tuple[Future, int]] = deque()
            submitted = 0

            def may_start(cost: int) -> bool:
                if len(in_flight) >= workers + PREFETCH_JOBS:
                    return False
                return not budgeted or not in_flight or self.cache.has_room(cost)

            current = 0  # bytes reserved by the job whose result is being handed over
            try:
                for job in plan.jobs:
                    while submitted < len(plan.jobs) and may_start(costs[submitted]):
                        ahead = plan.jobs[submitted]
                        self.cache.reserve(costs[submitted])
                        read = reader.submit(self._read_job, ahead)
                        computed = pool.submit(
                            self._compute_when_read, plan, ahead, read, seed, check_finite
                        )
                        in_flight.append((computed, costs[submitted]))
                        submitted += 1
                    future, current = in_flight.popleft()
                    result = future.result()
                    sink.write(job.out_name, result)
                    written += result.nbytes
                    del result
                    self.cache.release(current)
                    current = 0
                    bar.update()
            finally:
                self.cache.release(current)
                for future, cost in in_flight:  # a failed merge: skip work nobody will use
                    future.cancel()
                    self.cache.release(cost)
        bar.close()
        return MergeStats(time.perf_counter() - start, len(plan.jobs), written)

    def _compute_when_read(
        self, plan: MergePlan, job: TensorJob, read: Future, seed: int, check_finite: bool
    ) -> torch.Tensor:
        """A worker's whole share of a job: wait for its inputs, merge, check the result."""
        inputs, base = read.result()
        result = self._compute(plan, job, inputs, base, seed)
        if check_finite and not _finite(result):
            raise NonFiniteError(
                f"merged tensor {job.out_name!r} contains NaN or inf; the merge "
                "parameters are unusable (check weights, lambda and the sources)"
            )
        return result

    def _compute(
        self,
        plan: MergePlan,
        job: TensorJob,
        inputs: list[torch.Tensor],
        base: torch.Tensor | None,
        seed: int,
    ) -> torch.Tensor:
        if not job.mergeable:
            return base if base is not None else inputs[0]
        dtype = plan.compute_dtype
        if dtype is not None:
            inputs = [t.to(dtype) for t in inputs]
            base = base.to(dtype) if base is not None else None
        generator = None
        if plan.method.uses_randomness:
            generator = torch.Generator().manual_seed(tensor_seed(seed, job.out_name))
        try:
            result = plan.method.fn(inputs, base, job.per_model, job.params, generator)
        except ConfigError as err:
            raise ConfigError(f"tensor {job.out_name!r}: {err}") from None
        return result.to(plan.out_dtype)


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf: one min/max pass (NaN propagates into both), no temporary mask."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.reshape(-1))
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _as_config(config: MergeConfig | dict | str | Path) -> MergeConfig:
    return config if isinstance(config, MergeConfig) else load_merge_config(config)


def _seed(config: MergeConfig, seed: int | None) -> int:
    if seed is not None:
        return seed
    return config.seed if config.seed is not None else 0


def _check_output(
    out_dir: Path, plan: MergePlan, config: MergeConfig, checkpoints: CheckpointSet
) -> None:
    """The output must not be, contain or sit inside a source, nor be or contain the config
    file, the working directory or the home folder (``merging.outputs``)."""
    sources = [(ref, checkpoints.get(ref).folder) for ref in plan.model_refs]
    if config.tokenizer_source not in (None, "base", *plan.model_refs):
        sources.append((config.tokenizer_source, plan.tokenizer_model.folder))
    protected = source_models(sources) + existing_file("the config file", config.source_name)
    check_output(out_dir, protected)


def _write_metadata(
    folder: Path, plan: MergePlan, config: MergeConfig, copy_tokenizer: bool
) -> None:
    (folder / "config.json").write_text(
        json.dumps(plan.out_config, indent=2, sort_keys=True) + "\n"
    )
    (folder / "mergesearch_config.yml").write_text(config.to_yaml())
    generation = plan.reference.folder / "generation_config.json"
    if generation.is_file():
        shutil.copy2(generation, folder / generation.name)
    if copy_tokenizer:
        for name in TOKENIZER_FILES:
            src = plan.tokenizer_model.folder / name
            if src.is_file():
                shutil.copy2(src, folder / name)


def run_merge(
    config: MergeConfig | dict | str | Path,
    out_dir: str | Path,
    *,
    allow_pickle: bool = False,
    threads: int | None = None,
    **kwargs: Any,
) -> Path:
    """One merge from a mergekit-style config to a Hugging Face folder (the library entry point).

    ``kwargs`` go to ``Merger.merge_to_disk`` (seed, shard_size, copy_tokenizer, overwrite,
    progress, check_finite), which also holds the policy ``mergesearch merge`` applies: a
    non-finite result is refused, and a damaged source is named. No tensor cache: a one-off
    merge reads every source tensor once.
    """
    merger = Merger(cache_bytes=0, allow_pickle=allow_pickle, threads=threads)
    try:
        return merger.merge_to_disk(config, out_dir, **kwargs)
    finally:
        merger.close()
