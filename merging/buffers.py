"""Memory a merge reuses: buffers lent for reads and results, and a bound on what is in flight.

Fresh memory for every tensor costs a page fault per 4 KiB page the first time it is touched,
and glibc serves tensors of real models (tens of MB and more) with mappings of their own, so a
merge that allocates per tensor pays that on every byte it reads and computes: kernel time that
grows with the model. A ``BufferPool`` keeps the buffers of finished tensors and lends them
again. A model repeats a few shapes layer after layer, so a buffer of a fitting size is often
idle.

Methods ask for their result through ``empty_like``. In a worker of the engine (``lending``)
that is the destination itself (the live model's parameter: the result needs no copy), or an
input the job owns that the method may overwrite (its base: one tensor less in memory), or a
pooled buffer; anywhere else (tests, the methods called directly) it is ``torch.empty_like``.

``TensorCache`` is that bound: the source tensors a search keeps between trials plus what the
jobs in flight hold. A ``Ticket`` is one job's share of it: reserved before the job starts,
given back as its buffers come back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

# Below this a tensor comes from glibc's heap, which recycles small blocks by itself.
MIN_POOLED = 1 << 20
# An idle buffer serves a tensor up to this many times smaller (the rest of it lies unused).
REUSE_RATIO = 2


def nbytes(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> int:
    """Bytes a tensor of ``shape`` and ``dtype`` holds."""
    size = dtype.itemsize
    for dim in shape:
        size *= dim
    return size


class BufferPool:
    """Byte buffers by size; ``take`` lends one, ``give`` takes it back for the next ``take``.

    Idle plus lent bytes stay under ``max_bytes`` by dropping idle buffers when a new one is
    needed (lent ones are bounded by the engine's ``TensorCache``). ``max_bytes`` 0 keeps nothing:
    ``take`` is ``torch.empty``. ``pin`` allocates page-locked memory, which a GPU copies from
    without staging.
    """

    def __init__(self, max_bytes: int, *, pin: bool = False, reuse_ratio: float = REUSE_RATIO):
        self.max_bytes = max_bytes
        self.pin = pin
        # 1: only a buffer of the very size; a bound that counts requested bytes (a search's
        # cache reserves its jobs' bytes) then also bounds what is lent
        self.reuse_ratio = reuse_ratio
        self._idle: dict[int, list[torch.Tensor]] = {}
        self._idle_bytes = 0
        self._lent: dict[int, torch.Tensor] = {}  # storage address -> the buffer lent there
        self._lent_bytes = 0
        # memory the pool did not make but counts as lent (``hold``): storage address -> bytes
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()
        self.allocations = 0  # buffers made (each costs its pages' first-touch faults)
        self.reuses = 0  # buffers lent again

    def take(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype``, from an idle buffer if one fits."""
        size = nbytes(shape, dtype)
        if self.max_bytes <= 0 or size < MIN_POOLED:
            return torch.empty(shape, dtype=dtype, pin_memory=self.pin and size > 0)
        with self._lock:
            # the smallest idle buffer that holds it, up to a few times its size: a model's
            # shapes recur layer after layer (an attention projection a fraction of an MLP's),
            # and a buffer lent again is one whose pages are not faulted in again
            fits = [
                s
                for s, stack in self._idle.items()
                if stack and size <= s <= size * self.reuse_ratio
            ]
            buf = self._idle[min(fits)].pop() if fits else None
            if buf is not None:
                self._idle_bytes -= buf.numel()
                self.reuses += 1
            else:
                self._make_room(size)
                self.allocations += 1
        if buf is None:
            buf = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin)
        with self._lock:
            self._lent[buf.data_ptr()] = buf
            self._lent_bytes += buf.numel()
        return buf[:size].view(dtype).view(shape)

    def give(self, tensor: torch.Tensor) -> bool:
        """Take back a tensor ``take`` lent (or a view of it); False for any other tensor."""
        if tensor.device.type != "cpu":
            return False
        address = tensor.untyped_storage().data_ptr()
        with self._lock:
            buf = self._lent.pop(address, None)
            if buf is None:
                self._lent_bytes -= self._held.pop(address, 0)
                return False
            size = buf.numel()
            self._lent_bytes -= size
            self._idle.setdefault(size, []).append(buf)
            self._idle_bytes += size
            self._make_room(0)
        return True

    def hold(self, tensor: torch.Tensor) -> torch.Tensor:
        """Count ``tensor``'s memory, which the pool did not make (a map of a file), as lent
        until ``give``: idle buffers make room for it, so both stay under one bound."""
        size = tensor.untyped_storage().nbytes()
        with self._lock:
            self._make_room(size)
            self._held[tensor.untyped_storage().data_ptr()] = size
            self._lent_bytes += size
        return tensor

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is memory counted with ``hold`` (a map) and not given back."""
        if tensor.device.type != "cpu":
            return False
        with self._lock:
            return tensor.untyped_storage().data_ptr() in self._held

    def disown(self, tensor: torch.Tensor) -> None:
        """Stop tracking a tensor ``take`` lent that now belongs to someone else (the cache):
        ``give`` will not take it back, so it is never lent twice."""
        with self._lock:
            buf = self._lent.pop(tensor.untyped_storage().data_ptr(), None)
            if buf is not None:
                self._lent_bytes -= buf.numel()

    def limit(self, max_bytes: int) -> None:
        """A new bound (what a cache leaves of a shared one); idle buffers over it are dropped."""
        with self._lock:
            self.max_bytes = max(0, max_bytes)
            self._make_room(0)

    def forget(self) -> None:
        """Stop tracking lent buffers (after a failed merge nobody gives them back); they are
        freed when their last user drops them."""
        with self._lock:
            self._lent.clear()
            self._held.clear()
            self._lent_bytes = 0

    def _make_room(self, size: int) -> None:
        """Drop idle buffers, largest first, until ``size`` more bytes fit under the bound."""
        while self._idle_bytes and self._idle_bytes + self._lent_bytes + size > self.max_bytes:
            self._drop_largest_idle()

    def _drop_largest_idle(self) -> None:
        largest = max((s for s, stack in self._idle.items() if stack), default=0)
        self._idle[largest].pop()
        self._idle_bytes -= largest

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes


@dataclass
class _Lender:
    pool: BufferPool
    destination: torch.Tensor | None  # where the job's result belongs, if it can go there
    scratch: tuple[torch.Tensor, ...]  # inputs the job owns: a method may overwrite them


_LENDER: ContextVar[_Lender | None] = ContextVar("mergesearch_lender", default=None)


def empty_like(like: torch.Tensor, *, reuse: torch.Tensor | None = None) -> torch.Tensor:
    """Memory for a method's result shaped like ``like``.

    In order: the job's destination (the first call of a job only), ``reuse`` when the job owns
    it (a method passes an input whose every block it reads before writing that block of the
    result), a pooled buffer, or ``torch.empty_like`` outside the engine.
    """
    lender = _LENDER.get()
    if not isinstance(like, torch.Tensor):  # a streamed source (``streamed``): no memory of its own
        if lender is None:
            return torch.empty(like.shape, dtype=like.dtype)
        reuse = None
    if lender is None:
        return torch.empty_like(like)
    target = lender.destination
    if target is not None and target.dtype == like.dtype and target.numel() == like.numel():
        lender.destination = None
        return target.view(like.shape)
    if reuse is not None and reuse.dtype == like.dtype and reuse.numel() == like.numel():
        address = reuse.untyped_storage().data_ptr()
        if any(t.untyped_storage().data_ptr() == address for t in lender.scratch):
            lender.scratch = ()  # one result per job
            return reuse.view(like.shape)
    return lender.pool.take(like.shape, like.dtype)


@contextlib.contextmanager
def lending(
    pool: BufferPool,
    destination: torch.Tensor | None = None,
    scratch: tuple[torch.Tensor, ...] = (),
) -> Iterator[None]:
    """Serve ``empty_like`` in this thread from ``destination``, ``scratch`` and ``pool``."""
    token = _LENDER.set(_Lender(pool, destination, scratch))
    try:
        yield
    finally:
        _LENDER.reset(token)


class Ticket:
    """One job's reservation against a bound, given back in parts (the inputs once computed,
    the rest once the sink is done with the result) and never more than once in total."""

    def __init__(self, size: int, release: Callable[[int], None]):
        self.left = size
        self._release = release
        self._lock = threading.Lock()

    def release(self, size: int | None = None) -> None:
        """Give back ``size`` bytes of the reservation (all that is left when None)."""
        with self._lock:
            amount = self.left if size is None else min(size, self.left)
            self.left -= amount
        if amount:
            self._release(amount)


class TensorCache:
    """Source tensors by (model, name), and what a search derives from them, under a bound
    that also covers the jobs in flight.

    The executor ``reserve``s the bytes of every job it starts (inputs, dtype copies, result)
    and ``release``s them as the job's buffers come back (inputs once computed, the result once
    the sink is done with it). The cache keeps ``bytes + reserved`` under ``max_bytes``, and
    the pool the engine reads uncached sources into (``spare``) gets what it leaves, so the
    tensors the engine holds never exceed the bound, cached, idle or in flight (a job that
    alone exceeds it runs alone). Inputs that are also cached count twice: the bound errs on
    the safe side. ``store=False`` (a one-off merge, which reads every tensor once) caches
    nothing and bounds only what is in flight.

    A full cache keeps what it holds and turns new tensors away, and under the pressure of
    jobs in flight gives up its newest tensors first. A search reads the same tensors in the
    same order every trial: with sources larger than the cache, evicting the oldest would drop
    each tensor just before the next trial asks for it again (no hit at all), while keeping the
    first ones serves that share of every trial from memory. Derived entries (``derived=True``:
    a top-k's counts, a few thousandths of the tensor they save a pass over) make room for
    themselves by evicting the newest tensors.

    The executor tells the cache what its jobs will hold in flight at their peak
    (``expect_in_flight``), and the cache keeps that much of the bound free for them. Else
    every peak of a trial would evict cached tensors, the reader would cache others once it
    passed, and each such swap shrank the pool's share: its idle buffers were dropped, and
    the next trial read into fresh memory again (on the wide8 benchmark family, 146 fresh
    buffers a trial, most of them 112 MB, and a quarter of its time the kernel zeroing pages).
    """

    def __init__(self, max_bytes: int, *, store: bool = True, spare: BufferPool | None = None):
        self.max_bytes = max_bytes
        self.store = store
        self.spare = spare
        self.bytes = 0
        self.reserved = 0
        self.high_water = 0  # the most bytes + reserved ever reached after eviction
        self.in_flight_peak = 0  # bytes kept free for jobs (``expect_in_flight``)
        # key -> (value, bytes, derived), in the order they came
        self._items: dict[Hashable, tuple[Any, int, bool]] = {}
        # the reader thread puts, workers and the sink's writer release, the executor waits
        self._lock = threading.Condition()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def put(
        self, key: Hashable, value: Any, size: int | None = None, *, derived: bool = False
    ) -> bool:
        """Keep ``value`` (``size`` bytes; a tensor's own by default) if it fits beside what is
        cached and in flight, a derived one after evicting tensors; whether it was kept."""
        size = value.nbytes if size is None else size
        with self._lock:
            if not self.store or key in self._items:
                return False
            if derived:
                self._evict_until(lambda: self._fits(size), derived_too=False)
            if not self._fits(size):
                return False
            self._items[key] = (value, size, derived)
            self.bytes += size
            self._shrink()
            return True

    def expect_in_flight(self, nbytes: int) -> None:
        """Keep ``nbytes`` of the bound (at most all of it) for the jobs of the merges to come,
        evicting the newest tensors that are in the way."""
        with self._lock:
            self.in_flight_peak = min(max(0, nbytes), self.max_bytes)
            self._evict_until(
                lambda: self.bytes + self.in_flight_peak <= self.max_bytes, derived_too=False
            )
            self._shrink()

    def _fits(self, size: int) -> bool:
        """Whether ``size`` more bytes may be cached beside what jobs hold or will hold."""
        return self.bytes + size + max(self.reserved, self.in_flight_peak) <= self.max_bytes

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
            self._lock.notify_all()

    def wait_for_room(self, nbytes: int) -> None:
        """Block until ``nbytes`` fit, or until nothing is reserved (then a job that alone
        exceeds the bound may start)."""
        with self._lock:
            self._lock.wait_for(lambda: self.reserved <= 0 or self.has_room(nbytes))

    def _evict_newest(self, *, derived_too: bool) -> bool:
        """Drop the newest tensor (or, with ``derived_too`` and no tensor left, the newest
        derived entry); whether anything was dropped."""
        for want_derived in (False, True) if derived_too else (False,):
            for key in reversed(self._items):
                if self._items[key][2] == want_derived:
                    self.bytes -= self._items.pop(key)[1]
                    return True
        return False

    def _evict_until(self, done: Callable[[], bool], *, derived_too: bool) -> None:
        """Drop the newest entries (``_evict_newest``) until ``done()`` or none is left."""
        while not done() and self._evict_newest(derived_too=derived_too):
            pass

    def _shrink(self) -> None:
        self._evict_until(lambda: self.bytes + self.reserved <= self.max_bytes, derived_too=True)
        if self.spare is not None:  # what is not cached may be lent or idle there
            self.spare.limit(self.max_bytes - self.bytes)
        self.high_water = max(self.high_water, self.bytes + self.reserved)
