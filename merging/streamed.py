"""A source tensor read block by block when a method asks for it, instead of whole.

A merge without a cache bounds the bytes it holds in flight (``engine.STREAM_BYTES``), but a
method that needs a whole tensor (a top-k over it, an L1 norm, random draws in order) got all
of its inputs at once: four 262 MB embeddings of a Mistral-7B family are a GB by themselves, and
at 128k-token vocabularies and 8k width they would be 8 GB. Methods that only ever read their
inputs as flat blocks (``x.reshape(-1)[start:stop]``, ``MergeMethod.flat_blocks``) can take a
``StreamedSource`` instead: each block is a view of the tensor mapped from its file (whole rows
covering it), whose pages are dropped again a few MB behind the pass, so a large job holds its
result and a window of each input. A reader that does not map (a pickle checkpoint,
``MERGESEARCH_MAP=0``) reads each block with one ``pread``. Passes that read the same block of
the same input again in a row (the base, in each model's task vector) get the last block back.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from mergesearch.merging.checkpoint import MappedRows

STRIDED_CHUNK = 1 << 22  # entries read at once while taking a strided sample
RELEASE_BYTES = 8 << 20  # a mapped source drops the pages this far behind its pass


class RowReader(Protocol):
    def read_rows(self, name: str, start: int, stop: int, out: torch.Tensor) -> torch.Tensor: ...


class StreamedSource:
    """Tensor ``name`` of ``reader`` (its first ``shape[0]`` rows), seen as a flat vector
    whose slices are read on demand; with ``compute`` each block comes in that dtype."""

    def __init__(
        self,
        reader: RowReader,
        name: str,
        shape: tuple[int, ...],
        stored: torch.dtype,
        compute: torch.dtype | None = None,
        *,
        flat: bool = False,
    ):
        self.reader, self.name = reader, name
        self._stored_shape = tuple(shape)
        self.stored = stored
        self.dtype = compute or stored
        self.shape = torch.Size((math.prod(shape),) if flat else shape)
        self._width = math.prod(shape[1:]) if len(shape) > 1 else 1
        self._last: tuple[int, int, torch.Tensor] | None = None
        self._map: MappedRows | bool | None = False  # False: not tried yet (``_mapped``)
        self._released = 0  # rows before this one hold no mapped pages
        self._window_rows = max(1, RELEASE_BYTES // max(1, self._width * stored.itemsize))

    def _like(self, *, compute: torch.dtype | None, flat: bool) -> StreamedSource:
        return StreamedSource(
            self.reader, self.name, self._stored_shape, self.stored, compute, flat=flat
        )

    def numel(self) -> int:
        return self.shape.numel()

    def detach(self) -> StreamedSource:
        return self

    def reshape(self, *shape: int) -> StreamedSource:
        """Only the flat view (``reshape(-1)``): a method that needs another shape is not a
        flat-block method and must not get a streamed source."""
        if tuple(shape) not in ((-1,), (self.numel(),)):
            raise TypeError(f"a streamed source is read as flat blocks only, not as {shape}")
        return self if len(self.shape) == 1 else self._like(compute=self.dtype, flat=True)

    def to(self, dtype: torch.dtype) -> StreamedSource:
        if dtype == self.dtype:
            return self
        return self._like(compute=dtype, flat=len(self.shape) == 1)

    def materialize(self) -> torch.Tensor:
        """The whole tensor, read at once (for a method that hands an input back unchanged)."""
        whole = torch.empty(self._stored_shape, dtype=self.stored)
        self.reader.read_rows(self.name, 0, self._stored_shape[0], whole)
        return whole.to(self.dtype).reshape(self.shape)

    def __getitem__(self, block: slice) -> torch.Tensor:
        if len(self.shape) != 1 or not isinstance(block, slice):
            raise TypeError("a streamed source is read through its flat view, in slices")
        start, stop, step = block.indices(self.numel())
        if step != 1:
            return self._strided(start, stop, step)
        last = self._last
        if last is not None and last[0] == start and last[1] == stop:
            return last[2]
        first_row, end_row = start // self._width, -(-stop // self._width)
        rows = self._rows(first_row, end_row)
        offset = start - first_row * self._width
        values = rows.reshape(-1)[offset : offset + stop - start]
        if self.dtype != self.stored:
            values = values.to(self.dtype)
        self._last = (start, stop, values)
        return values

    def _rows(self, first: int, end: int) -> torch.Tensor:
        """Rows ``[first, end)`` as stored: a view of the tensor's map where the reader maps
        (no copy; see ``_mapped``), else read into memory of their own."""
        mapped = self._mapped()
        if mapped is None:
            rows = torch.empty((end - first, *self._stored_shape[1:]), dtype=self.stored)
            return self.reader.read_rows(self.name, first, end, rows)
        behind, window = self._released, self._window_rows
        if first < behind:  # a new pass from the start: what the last one touched goes
            mapped.release(behind, self._stored_shape[0])
            self._released = 0
        elif first - behind >= window:  # this pass moved on: what it left goes
            mapped.release(behind, first)
            self._released = first
        return mapped.rows[first:end]

    def _mapped(self) -> MappedRows | None:
        """The whole tensor mapped once, on first use (None where the reader does not map).
        Its pages fault in as blocks are read and are dropped again ``RELEASE_BYTES`` behind
        the pass, so memory holds a window of the tensor, not all of it (a 470 MB job's
        inputs at Mistral-7B width)."""
        if self._map is False:
            lazily = getattr(self.reader, "map_lazily", None)
            self._map = lazily(self.name, 0, self._stored_shape[0]) if lazily else None
        return self._map

    def _strided(self, start: int, stop: int, step: int) -> torch.Tensor:
        """Every ``step``-th entry of ``[start, stop)`` (a top-k's strided sample of a float32
        score), read in chunks that are whole multiples of ``step``, so each chunk's first
        entry is one of the sample; only the sample is kept."""
        if step < 1:
            raise TypeError("a streamed source is read forwards only")
        chunk = max(1, STRIDED_CHUNK // step) * step
        pieces = []
        for low in range(start, stop, chunk):
            pieces.append(self[low : min(stop, low + chunk)][::step].clone())
        self._last = None  # the chunks are not the blocks a method reads next
        return torch.cat(pieces) if pieces else torch.empty(0, dtype=self.dtype)
