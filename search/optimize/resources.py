"""What a search needs from the machine, known before the first trial: a device and memory.

``resolve_device`` turns the spec's ``device`` (cpu, cuda, cuda:N, auto) into a torch device,
or refuses one this machine lacks. ``check_fit`` adds up, from the checkpoint headers alone,
what the search will hold at its peak and refuses with one line (need, have, which knob to
turn) when the machine cannot hold it: a search that runs out of memory does so after its
first trials, or only once the cache has filled, and takes the work in flight with it.

What a search holds (host memory unless the live model is on a GPU):

- the live model, which every trial overwrites (on the GPU with ``device: cuda``);
- the tensor cache, ``cache_gb``; its bound also covers the jobs in flight, except one job
  larger than the bound, which runs alone;
- page-locked buffers for the copies to a GPU;
- the process itself (interpreter, torch, transformers, lm-eval, the evaluators' data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergesearch import merging
from mergesearch.merging.engine import PINNED_BYTES
from mergesearch.search.errors import SpecError
from mergesearch.search.spec.schema import DEVICE_RE, SearchSpec

GB = 2**30  # cache_gb and memory_limit_gb count GiB
RUNTIME_BYTES = 1 << 30  # the process beside the tensors: libraries, tokenizers, eval data
GPU_MARGIN = 0.2  # of the model, for activations and the evaluators' batches on a GPU


def resolve_device(spec: SearchSpec) -> torch.device:
    """The spec's ``device`` on this machine; ``SpecError`` when it has no such device."""
    return device_for(spec.device, f"{spec.source}: device: {spec.device}")


def device_for(name: str, where: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` as a torch device of this machine, or
    ``SpecError`` naming ``where`` (the key or flag that asked for it) and the fix."""
    if not DEVICE_RE.match(name):
        raise SpecError(f"{where}: use cpu, cuda, cuda:N (a GPU index) or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SpecError(
                f"{where}, but this machine has no CUDA device (torch {torch.__version__}); "
                "use device: cpu, or auto to take a GPU when there is one"
            )
        if device.index is not None and device.index >= count:
            raise SpecError(
                f"{where}, but this machine has {count} CUDA device(s) (cuda:0 to "
                f"cuda:{count - 1}); pick one of them"
            )
    return device


@dataclass(frozen=True)
class Need:
    """Bytes a search holds at its peak."""

    model: int  # the live model
    cache: int  # cache_gb, which also bounds the jobs in flight
    beyond_cache: int  # a job larger than the cache bound runs alone, past it
    pinned: int  # page-locked buffers for copies to a GPU
    runtime: int
    on_gpu: bool

    @property
    def host(self) -> int:
        model = 0 if self.on_gpu else self.model
        return model + self.cache + self.beyond_cache + self.pinned + self.runtime

    @property
    def gpu(self) -> int:
        return int(self.model * (1 + GPU_MARGIN)) if self.on_gpu else 0


def estimate(
    spec: SearchSpec,
    merger: merging.Merger,
    configs: list[dict[str, Any]],
    device: torch.device,
) -> Need:
    """What the search over ``configs`` (its baselines: each source alone, their average)
    holds on ``device``, from the checkpoint headers."""
    prints = [merger.footprint(merging.load_merge_config(c)) for c in configs]
    model = max(p.model_bytes for p in prints)
    largest = max(p.largest_job_bytes for p in prints)
    cache = int(spec.cache_gb * GB)
    on_gpu = device.type == "cuda"
    return Need(
        model=model,
        cache=cache,
        beyond_cache=max(0, largest - cache),
        pinned=PINNED_BYTES if on_gpu else 0,
        runtime=RUNTIME_BYTES,
        on_gpu=on_gpu,
    )


def available_host_bytes() -> int:
    """Memory this process can still take: the kernel's estimate (``MemAvailable``), within a
    cgroup's limit when it runs in one (a container, a Slurm job)."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), None without a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)


def check_fit(
    spec: SearchSpec,
    merger: merging.Merger,
    configs: list[dict[str, Any]],
    device: torch.device,
    *,
    workers: int = 1,
) -> Need:
    """``SpecError`` (one line: need, have, the knob to turn) when ``workers`` processes of
    this search cannot fit in memory; else what one of them needs."""
    need = estimate(spec, merger, configs, device)
    if spec.memory_limit_gb is not None:
        have, what = int(spec.memory_limit_gb * GB), "memory_limit_gb allows"
    else:
        have, what = available_host_bytes(), "this machine has available"
    if need.host * workers > have:
        parts = [
            f"live model {need.model / GB:.1f}" if not need.on_gpu else "",
            f"cache_gb {need.cache / GB:.1f}",
            f"one job past the cache {need.beyond_cache / GB:.1f}" if need.beyond_cache else "",
            f"pinned buffers {need.pinned / GB:.1f}" if need.pinned else "",
            f"runtime {need.runtime / GB:.1f}",
        ]
        per = " + ".join(p for p in parts if p)
        times = f" x {workers} workers" if workers > 1 else ""
        raise SpecError(
            f"{spec.source}: the search needs {need.host * workers / GB:.1f} GiB of memory "
            f"({per}{times}) but {what} {have / GB:.1f} GiB; {_knobs(spec, need, have, workers)}"
        )
    if need.on_gpu:
        free, _ = torch.cuda.mem_get_info(device)
        if need.gpu > free:
            raise SpecError(
                f"{spec.source}: the live model needs {need.gpu / GB:.1f} GiB on {device} "
                f"(model {need.model / GB:.1f} + {GPU_MARGIN:.0%} for evaluation) but it has "
                f"{free / GB:.1f} GiB free; use dtype: bfloat16, another GPU (device: cuda:N), "
                "or device: cpu"
            )
    return need


def _knobs(spec: SearchSpec, need: Need, have: int, workers: int) -> str:
    """The settings that would make the search fit: a smaller cache when that is enough,
    else what else frees memory."""
    over = need.host - have // workers
    if need.cache and over <= need.cache:
        return f"lower cache_gb to {(need.cache - over) / GB:.1f} or less"
    knobs = ["cache_gb: 0 is not enough"] if need.cache else []
    if not need.on_gpu and spec.dtype == "float32":
        knobs.append("dtype: bfloat16 halves the live model")
    if not need.on_gpu and torch.cuda.is_available():
        knobs.append("device: cuda moves the live model to the GPU")
    if workers > 1:
        knobs.append("start fewer --workers")
    knobs.append("or use a machine with more memory")
    return "; ".join(knobs)


def check_workers_fit(spec: SearchSpec, workers: int) -> None:
    """``check_fit`` for ``workers`` processes of ``spec`` on this machine, before any starts."""
    from mergesearch.search.optimize.space import SearchSpace

    merger = merging.Merger(cache_bytes=int(spec.cache_gb * GB))
    configs = list(SearchSpace(spec).baselines().values())
    check_fit(spec, merger, configs, resolve_device(spec), workers=workers)
