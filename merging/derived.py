"""What a search keeps between trials besides source tensors: values derived from sources alone.

An exact top-k of ``|x - b|`` in 16 bits starts with a pass that counts every magnitude
(``selection.count16``), and those counts depend on the two source tensors only, not on the
trial's density. A search merging the same sources trial after trial would count them again
every time; kept, later trials skip that pass (a fifth of a ties trial's work at Mistral-7B
width). The engine opens a ``scope`` around each job of a search (a merger with a cache),
naming its inputs; a method gets an ``identity`` for each input and asks ``remembered`` for
what it derives from it. The values live in the engine's cache, under its bound. Outside a
scope (a one-off merge, a method called directly) nothing is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from mergesearch.merging.buffers import TensorCache

T = TypeVar("T")


@dataclass(frozen=True)
class _Scope:
    cache: TensorCache
    inputs: tuple[Hashable, ...]
    base: Hashable


_SCOPE: ContextVar[_Scope | None] = ContextVar("mergesearch_derived", default=None)


@contextlib.contextmanager
def scope(cache: TensorCache, inputs: tuple[Hashable, ...], base: Hashable) -> Iterator[None]:
    """Within the block, this thread's job reads ``inputs`` (and ``base``) and keeps what it
    derives from them in ``cache``."""
    token = _SCOPE.set(_Scope(cache, inputs, base))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def identity(index: int) -> Hashable | None:
    """What input ``index`` of this thread's job is, together with its base (a task vector
    depends on both); None outside a scope."""
    current = _SCOPE.get()
    return None if current is None else (current.inputs[index], current.base)


def remembered(key: Hashable | None, compute: Callable[[], T]) -> T:
    """``compute()``, or what it returned for ``key`` in an earlier trial. ``key`` None (no
    identity) computes every time. The value needs an ``nbytes``: it counts against the
    cache's bound."""
    current = _SCOPE.get()
    if key is None or current is None:
        return compute()
    kept: Any = current.cache.get(("derived", key))
    if kept is not None:
        return kept
    value = compute()
    current.cache.put(("derived", key), value, derived=True)
    return value
