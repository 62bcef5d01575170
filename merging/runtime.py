"""Process settings a merge runs under: torch's intra-op threads and glibc's allocator.

Threads: the engine computes several tensors at once, one per worker thread, each running torch
ops single-threaded (ops release the GIL). Splitting every op across OpenMP threads instead
spends most of the time in fork/join and spin-waits on the cache-sized blocks the methods use,
and far more when other processes share the cores (``bench/RESULTS_merge.md``).

Allocator: every tensor a merge reads or computes is new memory of the same few sizes. glibc
serves blocks above its mmap threshold with fresh ``mmap`` pages and returns freed heap tops to
the kernel, so each of them page-faults again, several times the system time of reading into
reused buffers. Raising the threshold to its maximum, keeping freed memory and sharing one
arena between threads lets the heap recycle it; the heap then holds about the merge's peak
working set (a few tensors), not more. That maximum is 32 MiB: the larger tensors of real
models are recycled by the engine's own pool instead (``buffers.BufferPool``).

That heap suits a streaming merge only. A search's tensor cache evicts tensors of many sizes in
turn, and a recycling heap keeps their holes: RSS grows well past the cache bound
(``bench/search_memory.py``). A process that caches therefore asks for the opposite
(``release_freed_memory``): a fixed, low mmap threshold, so every tensor larger than a method's
working block is its own mapping and goes back to the kernel when freed; RSS then follows the
tensors alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Iterator

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound on 64-bit
_TRIM_THRESHOLD = 512 * 2**20
# Above the methods' 1 MiB float32 blocks (their temporaries stay on the heap), below the
# tensors of any real model.
_RELEASE_MMAP_THRESHOLD = 2 * 2**20
_RELEASE_TRIM_THRESHOLD = 128 * 2**10  # glibc's default
_mode: str | None = None  # "recycle" or "release", once chosen


def _mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other libcs: keep their defaults
        return None


def tune_allocator() -> None:
    """Make glibc recycle tensor-sized blocks, unless a cache already asked it to release them."""
    global _mode
    if _mode is not None or (mallopt := _mallopt()) is None:
        return
    _mode = "recycle"
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    # one arena: a tensor read in the prefetch thread and freed by a worker returns to the heap
    # the next read allocates from (per-thread arenas give their memory back to the kernel)
    mallopt(_M_ARENA_MAX, 1)


def release_freed_memory() -> None:
    """Give every freed tensor back to the kernel (a process holding a bounded cache).

    Wins over ``tune_allocator``: once a process caches, its memory bound matters more than
    the page faults a recycling heap saves.
    """
    global _mode
    if _mode == "release" or (mallopt := _mallopt()) is None:
        return
    _mode = "release"
    # setting the threshold also stops glibc from raising it as large blocks are freed
    mallopt(_M_MMAP_THRESHOLD, _RELEASE_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _RELEASE_TRIM_THRESHOLD)


@contextlib.contextmanager
def single_threaded_ops() -> Iterator[None]:
    """Run torch ops on one intra-op thread inside the block; restore the setting after."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)
