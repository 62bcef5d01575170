"""Process settings a merge runs under: torch's intra-op threads and glibc's allocator.

Threads: the engine computes several tensors at once, one per worker thread, each running torch
ops single-threaded (ops release the GIL). Splitting every op across OpenMP threads instead
spends most of the time in fork/join and spin-waits on the cache-sized blocks the methods use,
and far more when other processes share the cores (linear took 36 s of CPU at 2 threads
against 6 s at 1 on a loaded 2-core machine).

Allocator: every tensor a merge reads or computes is new memory of the same few sizes. glibc
serves blocks above its mmap threshold with fresh ``mmap`` pages and returns freed heap tops to
the kernel, so each of them page-faults again: reading the benchmark family's three inputs cost
3.6 s of system time against 1.2 s into reused buffers. Raising the threshold to its maximum
(32 MiB), keeping freed memory and sharing one arena between threads lets the heap recycle it;
the heap then holds about the merge's peak working set (a few tensors), not more.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound on 64-bit
_TRIM_THRESHOLD = 512 * 2**20
_tuned = False


def tune_allocator() -> None:
    """Make glibc recycle tensor-sized blocks (once per process; a no-op elsewhere)."""
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return
    _tuned = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: keep their defaults
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    # one arena: a tensor read in the prefetch thread and freed by a worker returns to the heap
    # the next read allocates from (per-thread arenas give their memory back to the kernel)
    mallopt(_M_ARENA_MAX, 1)


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
