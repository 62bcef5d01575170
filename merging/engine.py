"""Execute a plan into a sink: read each input once, compute, hand the result over, forget it.

One ``Merger`` per process: it keeps checkpoints open and a bounded cache of source tensors, so a
search that merges the same sources trial after trial reads them from disk once. Both sinks run
through ``_execute``: a search candidate and an exported model are made by the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from mergesearch.merging import buffers, derived
from mergesearch.merging.buffers import TensorCache as _TensorCache
from mergesearch.merging.card import merge_card
from mergesearch.merging.checkpoint import CheckpointSet
from mergesearch.merging.config import MergeConfig, load_merge_config
from mergesearch.merging.errors import ConfigError, MergeRuntimeError
from mergesearch.merging.methods.draws import Draws
from mergesearch.merging.outputs import check_output, existing_file, source_models
from mergesearch.merging.plan import MergePlan, TensorJob, TensorRef, _Planner
from mergesearch.merging.runtime import release_freed_memory, single_threaded_ops, tune_allocator
from mergesearch.merging.sinks import DiskSink, ModelSink, Rows, TensorSink, nbytes, parse_size
from mergesearch.merging.streamed import StreamedSource

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
MERGEKIT_YAML = "mergekit_config.yml"  # the name mergekit-yaml gives the config it merged
CARD = "README.md"
PLAN_CACHE_SIZE = 8  # a search alternates few configs; plans hold only names and parameters
PREFETCH_JOBS = 2  # jobs read ahead beyond those being computed
# What a merge without a cache holds in flight (inputs, results, tensors waiting to be written):
# with the interpreter and torch, peak memory stays near this whatever the model's size. 768 MiB
# (it was 1 GiB): jobs of flat-block methods whose inputs pass half of it stream them instead
# (``streamed``), which on a Mistral-7B-width family took ties from 1.68 to 1.10 GB peak RSS.
STREAM_BYTES = 768 << 20
# An elementwise method merges a tensor larger than twice this in parts of about this many
# output bytes (whole rows): a part of each input in memory, and every worker busy on one tensor.
PART_BYTES = 32 << 20
# Page-locked host buffers kept for copies to a GPU.
PINNED_BYTES = 1 << 30


class NonFiniteError(MergeRuntimeError):
    """A merged tensor holds NaN or inf: the candidate is unusable (a search fails the trial)."""


@dataclass(frozen=True)
class Footprint:
    model_bytes: int  # the merged model (a live model of it holds this much)
    largest_job_bytes: int  # the most one tensor's job holds in flight (inputs and result)


@dataclass
class MergeStats:
    seconds: float
    tensors: int
    bytes_written: int


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed from (seed, tensor name): same masks whatever the order or threads."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class _Part:
    """What one worker merges at once: a job's whole tensor, or rows of it."""

    job: TensorJob
    rows: Rows | None = None
    last: bool = True  # the job's last part
    streamed: bool = False  # inputs read block by block as the method asks (``streamed``)


class Merger:
    """Plans and executes merges; keep one per process to reuse open checkpoints and the cache."""

    def __init__(
        self,
        *,
        cache_bytes: int = 2 * 2**30,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        threads: int | None = None,
        stream_bytes: int = STREAM_BYTES,
    ):
        self.checkpoints = CheckpointSet(allow_pickle=allow_pickle)
        # Without a cache the bound is on what is in flight, and buffers are recycled within
        # it. With one, the sources it does not keep are read into recycled buffers too (a
        # search reads them again every trial), whose idle bytes count against the same bound
        # and go first when it is reached; the process gives other freed memory back
        # (``runtime``), and results go straight into the live model (``ModelSink``).
        if cache_bytes > 0:
            self.pool = buffers.BufferPool(cache_bytes, reuse_ratio=1)
            self.cache = _TensorCache(cache_bytes, spare=self.pool)
        else:
            self.cache = _TensorCache(stream_bytes, store=False)
            self.pool = buffers.BufferPool(stream_bytes)
        self._pinned: buffers.BufferPool | None = None  # made for the first GPU model
        self.trust_remote_code = trust_remote_code
        # tensors computed at once (None: torch's thread count when a merge starts)
        self.threads = threads
        # A streaming merge recycles blocks of a few sizes: worth a heap that keeps them. A
        # cache evicts tensors of every size, and such a heap would keep their holes.
        if not self.cache.store:
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

    def new_model(
        self, config: MergeConfig | dict | str | Path, *, device: str | torch.device = "cpu"
    ) -> torch.nn.Module:
        """An empty model of the merged architecture on ``device``, to be filled by
        ``merge_into`` (made there directly: a model for a GPU never passes through host
        memory).

        Its weights are left uninitialised: every one is overwritten by the first merge
        (``ModelSink.close`` refuses a model with a tensor left unwritten), and drawing them
        at random took 29 s of a search's start at Mistral-7B width with 8 layers, against 2 s
        without. Buffers computed by the modules themselves (rotary frequencies) are kept.
        """
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        out_config = self.output_config(config)
        with torch.device(device), no_init_weights():
            model = AutoModelForCausalLM.from_config(
                out_config,
                trust_remote_code=self.trust_remote_code,
                dtype=self.plan(config).out_dtype,
            )
        model.tie_weights()  # skipped with the initialisation: an lm_head is the embedding again
        return model.eval()

    def footprint(self, config: MergeConfig | dict | str | Path) -> Footprint:
        """What merging ``config`` holds, from the checkpoint headers alone (nothing is read)."""
        plan = self.plan(config)
        jobs = [self._job_bytes(plan, job) for job in plan.jobs]
        return Footprint(plan.total_bytes, max(jobs, default=0))

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
        stats = self._execute(
            self.plan(config),
            sink,
            _seed(config, seed),
            progress,
            check_finite,
            results=self._results_pool(_device_of(model)),
        )
        sink.close()
        return stats

    def _results_pool(self, device: torch.device) -> buffers.BufferPool:
        """Where merged tensors are made: host memory, page-locked for a model on a GPU (its
        copies then run without blocking the merge)."""
        if device.type != "cuda":
            return self.pool
        if self._pinned is None:
            self._pinned = buffers.BufferPool(PINNED_BYTES, pin=True)
        return self._pinned

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
            used = _seed(config, seed)
            if plan.method.uses_randomness and config.seed != used:  # the YAML rebuilds it
                config = dataclasses.replace(config, seed=used)
            _write_metadata(sink.folder, plan, config, copy_tokenizer, title=out_dir.name)
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
        return sum(self._job_shares(plan, job))

    def _result_in_base(
        self, plan: MergePlan, job: TensorJob
    ) -> Literal["as read", "converted"] | None:
        """Where a job's result is computed when it goes into its base's buffer, which a merge
        without a cache owns: into the base as read (then the base is read into a buffer of
        the merge's own, not mapped), into its compute-dtype copy, or (None) elsewhere."""
        if not plan.method.result_in_base or job.base is None or self.cache.store:
            return None
        stored = self.checkpoints.get(job.base.model).tensors[job.base.name].dtype
        if (plan.compute_dtype or stored) != plan.out_dtype:
            return None
        return "as read" if plan.compute_dtype in (None, stored) else "converted"

    def _job_shares(self, plan: MergePlan, job: TensorJob) -> tuple[int, int]:
        """A job's bytes in flight as (inputs and their compute-dtype copies, result)."""
        refs = [*job.inputs, *([job.base] if job.base is not None else [])]
        result = nbytes(job.shape, plan.out_dtype) if job.mergeable else 0
        if self._result_in_base(plan, job):
            result = 0  # computed into the base's buffer, which this merge owns
        compute = plan.compute_dtype if job.mergeable else None
        inputs = 0
        for ref in refs:
            info = self.checkpoints.get(ref.model).tensors[ref.name]
            if info.dtype is not None:
                inputs += nbytes(info.shape, info.dtype)
            if compute is not None and compute != info.dtype:
                inputs += nbytes(info.shape, compute)
        return inputs, result

    def _parts(self, plan: MergePlan) -> Iterator[_Part]:
        """Every job whole, except large tensors of an elementwise method (and plain copies)
        in a one-off merge: those in parts of whole rows. A cache keeps tensors whole. A job of
        a flat-block method whose inputs would fill half of what may be in flight has them
        streamed: read block by block as the method asks for them."""
        for job in plan.jobs:
            rows = job.shape[0] if job.shape else 0
            size = nbytes(job.shape, self._out_dtype(plan, job))
            if job.mergeable and not plan.method.elementwise:
                yield _Part(job, streamed=self._streams(plan, job))
                continue
            if self.cache.store or rows < 2 or size <= 2 * PART_BYTES:
                yield _Part(job)
                continue
            step = max(1, rows * PART_BYTES // size)
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                yield _Part(job, (start, stop), stop == rows)

    def _streams(self, plan: MergePlan, job: TensorJob) -> bool:
        if self.cache.store or not plan.method.reads_flat_blocks(job.params) or not job.shape:
            return False
        inputs, _ = self._job_shares(plan, job)
        return inputs > self.cache.max_bytes // 2

    def _streamed_result_bytes(self, plan: MergePlan, job: TensorJob) -> int:
        """A streamed job's result never takes the base's buffer (there is none): the method's
        result in the compute dtype, plus its copy in the output dtype when they differ."""
        ref = job.base or job.inputs[0]
        computed = plan.compute_dtype or self.checkpoints.get(ref.model).tensors[ref.name].dtype
        result = nbytes(job.shape, computed)
        return result + (nbytes(job.shape, plan.out_dtype) if computed != plan.out_dtype else 0)

    def _part_shares(self, plan: MergePlan, part: _Part) -> tuple[int, int]:
        if part.streamed:  # a few blocks at a time, next to a result of its own
            return 0, self._streamed_result_bytes(plan, part.job)
        inputs, result = self._job_shares(plan, part.job)
        if part.rows is None:
            return inputs, result
        fraction = (part.rows[1] - part.rows[0]) / part.job.shape[0]
        return math.ceil(inputs * fraction), math.ceil(result * fraction)

    def _read(
        self, ref: TensorRef, rows: Rows | None = None, *, mapped: bool = True
    ) -> torch.Tensor:
        """A source tensor (rows ``[start, stop)`` of it): from the cache, or read from disk
        into a pooled buffer (which the engine gives back once the job is computed), or mapped
        (``_read_pooled``) unless ``mapped`` is False."""
        key = (ref.model, ref.name)
        if self.cache.store:
            tensor = self.cache.get(key)
            if tensor is None:
                tensor = self._read_pooled(ref.model, ref.name, None)  # whole: it may be kept
                if self.cache.put(key, tensor):
                    self.pool.disown(tensor)  # the cache's now: never lent again
            if rows is not None:
                return tensor[rows[0] : rows[1]]
            return tensor[: ref.rows] if ref.rows is not None else tensor
        if rows is None and ref.rows is not None:
            rows = (0, ref.rows)
        return self._read_pooled(ref.model, ref.name, rows, mapped=mapped)

    def _read_pooled(
        self, model: str, name: str, rows: Rows | None, *, mapped: bool = False
    ) -> torch.Tensor:
        """Rows ``[start, stop)`` of a source tensor (all of it for None) into a buffer of the
        pool, or, without a cache and with ``mapped``, mapped from the file
        (``Checkpoint.map_rows``): nothing keeps them past their job, so a map costs no more
        memory and saves the copy."""
        checkpoint = self.checkpoints.get(model)
        info = checkpoint.tensors[name]
        if not info.shape:
            return checkpoint.read_rows(name, 0, 1, self.pool.take((), info.dtype))
        start, stop = rows if rows is not None else (0, info.shape[0])
        if mapped and not self.cache.store:
            pages = checkpoint.map_rows(name, start, stop)
            if pages is not None:
                return self.pool.hold(pages)  # its pages count against the pool's bound
        out = self.pool.take((stop - start, *info.shape[1:]), info.dtype)
        return checkpoint.read_rows(name, start, stop, out)

    def _read_part(
        self, part: _Part, base_holds_result: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """A part's inputs and base. A base that will hold the result as read
        (``_result_in_base``) is read into a buffer of the merge's own, not mapped: a mapped
        one would make the result take a buffer more, and with it fewer jobs fit in flight (a
        7B-width ties merge whose inputs did not fit the page cache: 51-60 s so against 42-58 s
        read, in alternated runs; 42-46 s against 42-45 s with the base read)."""
        job = part.job
        if part.streamed:
            return [self._source(r, part.rows) for r in job.inputs], (
                self._source(job.base, part.rows) if job.base else None
            )
        inputs = [self._read(r, part.rows) for r in job.inputs]
        if job.base is None:
            return inputs, None
        return inputs, self._read(job.base, part.rows, mapped=not base_holds_result)

    def _source(self, ref: TensorRef, rows: Rows | None = None) -> torch.Tensor:
        """A source tensor that reads itself block by block (``streamed``), typed as a tensor:
        flat-block methods use nothing else of it."""
        checkpoint = self.checkpoints.get(ref.model)
        info = checkpoint.tensors[ref.name]
        shape = tuple(info.shape)
        if ref.rows is not None:
            shape = (ref.rows, *shape[1:])
        return StreamedSource(checkpoint, ref.name, shape, info.dtype)  # type: ignore[return-value]

    def _execute(
        self,
        plan: MergePlan,
        sink: TensorSink,
        seed: int,
        progress: bool,
        check_finite: bool,
        *,
        results: buffers.BufferPool | None = None,
    ) -> MergeStats:
        """Run every job; results reach the sink in plan order.

        Three kinds of threads overlap: one reads inputs ahead (``preadv`` releases the GIL)
        into recycled buffers, ``threads`` workers compute one tensor (or part) each with
        single-threaded torch ops (see ``runtime``), and the disk sink writes behind. At most
        ``workers + PREFETCH_JOBS`` parts are in flight, and their bytes stay under the cache's
        bound (``_TensorCache``), which bounds memory whatever the model's size.
        """
        start = time.perf_counter()
        written = 0
        workers = max(1, self.threads or torch.get_num_threads())
        results = results or self.pool
        bar = tqdm(
            total=len(plan.jobs),
            desc=f"merge ({plan.method.name})",
            unit="tensor",
            disable=not progress,
            leave=False,
        )
        parts = list(self._parts(plan))
        shares = [self._part_shares(plan, part) for part in parts]
        most_in_flight = workers + PREFETCH_JOBS
        if self.cache.store:  # the jobs' peak stays free of cached tensors: buffers recycle
            self.cache.expect_in_flight(_peak_in_flight(shares, most_in_flight))
        tickets: list[buffers.Ticket] = []
        try:
            with (
                single_threaded_ops(),
                ThreadPoolExecutor(1, thread_name_prefix="prefetch") as reader,
                ThreadPoolExecutor(workers, thread_name_prefix="merge") as pool,
            ):
                in_flight: deque[tuple[Future, _Part, buffers.Ticket]] = deque()
                submitted = 0
                try:
                    for _ in parts:
                        while submitted < len(parts) and len(in_flight) < most_in_flight:
                            cost = sum(shares[submitted])
                            if not self.cache.has_room(cost):
                                if in_flight:
                                    break
                                sink.flush()  # results the sink holds come back, then start
                                self.cache.wait_for_room(cost)
                            ahead = parts[submitted]
                            self.cache.reserve(cost)
                            ticket = buffers.Ticket(cost, self.cache.release)
                            tickets.append(ticket)
                            read = reader.submit(
                                self._read_part,
                                ahead,
                                self._result_in_base(plan, ahead.job) == "as read",
                            )
                            computed = pool.submit(
                                self._compute_when_read,
                                plan,
                                ahead,
                                read,
                                seed,
                                check_finite,
                                (sink, results, ticket, shares[submitted][0]),
                            )
                            in_flight.append((computed, ahead, ticket))
                            submitted += 1
                        future, part, ticket = in_flight.popleft()
                        result = future.result()
                        done = partial(_hand_back, (results, self.pool), result, ticket)
                        sink.write(part.job.out_name, result, rows=part.rows, done=done)
                        written += result.nbytes
                        del result
                        if part.last:
                            bar.update()
                finally:
                    for future, _, _ in in_flight:  # a failed merge: skip work nobody will use
                        future.cancel()
        except BaseException:
            for ticket in tickets:
                ticket.release()
            self.pool.forget()
            results.forget()
            raise
        finally:
            bar.close()
        return MergeStats(time.perf_counter() - start, len(plan.jobs), written)

    def _compute_when_read(
        self,
        plan: MergePlan,
        part: _Part,
        read: Future,
        seed: int,
        check_finite: bool,
        hand: tuple[TensorSink, buffers.BufferPool, buffers.Ticket, int],
    ) -> torch.Tensor:
        """A worker's whole share of a part: wait for its inputs, merge (into the sink's
        destination when it offers one), give the inputs back, check the result."""
        sink, results, ticket, inputs_share = hand
        job = part.job
        inputs, base = read.result()
        destination = sink.destination(job.out_name, part.rows) if job.mergeable else None
        result = self._compute(plan, job, inputs, base, seed, results, destination)
        kept = 0  # bytes of an input the result lives in: they stay reserved until written
        for tensor in (*inputs, base):
            if not isinstance(tensor, torch.Tensor):  # None, or a streamed source
                continue
            if _shares_memory(tensor, result):
                kept += tensor.nbytes
            else:
                self.pool.give(tensor)
        ticket.release(max(0, inputs_share - kept))
        if check_finite and not _finite(result):
            _hand_back((results, self.pool), result, ticket)
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
        results: buffers.BufferPool | None = None,
        destination: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merge one tensor (or part). With ``results`` the method's result comes from there,
        or is ``destination``, or takes the base's buffer when this merge owns it."""
        if not job.mergeable:
            return base if base is not None else inputs[0]
        dtype = plan.compute_dtype
        sources, source_base = inputs, base
        if dtype is not None:
            inputs = [t.to(dtype) for t in inputs]
            base = base.to(dtype) if base is not None else None
        # the base's buffer may take the result when this merge made it: a conversion, or a
        # buffer read for this job (not a cached tensor, nor a map of the file)
        owned = isinstance(base, torch.Tensor) and (
            base is not source_base or (not self.cache.store and not self.pool.holds(base))
        )
        generator = None
        if plan.method.uses_randomness:
            generator = Draws(tensor_seed(seed, job.out_name))
        lender = (
            buffers.lending(results, destination, (base,) if owned else ())  # type: ignore[arg-type]
            if results is not None
            else contextlib.nullcontext()
        )
        # a search keeps what a method derives from its sources alone for the next trials
        remembering = (
            derived.scope(self.cache, tuple(job.inputs), job.base)
            if self.cache.store
            else contextlib.nullcontext()
        )
        try:
            with lender, remembering:
                result = plan.method.fn(inputs, base, job.per_model, job.params, generator)
                if isinstance(result, StreamedSource):  # an input handed back unchanged
                    result = result.materialize()
        except ConfigError as err:
            raise ConfigError(f"tensor {job.out_name!r}: {err}") from None
        if result.dtype == plan.out_dtype or results is None:
            return result.to(plan.out_dtype)
        converted = results.take(result.shape, plan.out_dtype).copy_(result)
        # a result in an input's buffer goes back with the inputs (``_compute_when_read``)
        if not any(
            _shares_memory(result, t)
            for t in (*sources, source_base)
            if isinstance(t, torch.Tensor)
        ):
            _hand_back((results, self.pool), result, None)
        return converted


def _peak_in_flight(shares: list[tuple[int, int]], window: int) -> int:
    """The most bytes ``window`` consecutive parts hold together (the executor runs at most
    that many at once, in plan order)."""
    totals = [sum(share) for share in shares]
    return max((sum(totals[i : i + window]) for i in range(len(totals))), default=0)


def _hand_back(
    pools: tuple[buffers.BufferPool, ...], tensor: torch.Tensor, ticket: buffers.Ticket | None
) -> None:
    """The sink is done with a result: its buffer goes back to the pool it came from (the
    results' pool, or the reads' pool when it took an input's buffer), its bytes to the bound.
    Called once per result: a second ``give`` could return a buffer lent again since."""
    any(pool.give(tensor) for pool in pools)
    if ticket is not None:
        ticket.release()


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _device_of(model: torch.nn.Module) -> torch.device:
    first = next(iter(model.state_dict().values()), None)
    return first.device if first is not None else torch.device("cpu")


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
    folder: Path, plan: MergePlan, config: MergeConfig, copy_tokenizer: bool, *, title: str
) -> None:
    """Everything but the weights, written into the output before it is renamed into place:
    the model's config, the merge's mergekit YAML and a short model card (what
    ``mergekit-yaml`` leaves too), the generation config and the tokenizer."""
    (folder / "config.json").write_text(
        json.dumps(plan.out_config, indent=2, sort_keys=True) + "\n"
    )
    (folder / MERGEKIT_YAML).write_text(config.to_yaml())
    (folder / CARD).write_text(merge_card(config, title), encoding="utf-8")
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
