"""Where merged tensors go: a live model (search) or sharded safetensors on disk (merge, export).

``DiskSink`` knows every output name, shape and dtype from the plan before the first tensor is
computed, so it writes each shard's header first and then streams tensor bytes in plan order:
memory stays at a few tensors, not one shard. A writer thread does the writing (file writes
release the GIL), so the merge computes the next tensor meanwhile. The folder is built under a
temporary sibling name and renamed into place only when complete, so an interrupted merge never
leaves a folder that looks finished.

Both sinks take a tensor whole or in parts of rows, in order, and call the writer's ``done``
once they no longer need its memory, so the engine lends that buffer again.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from mergesearch.merging.atomic import cleanup_stale_temps, fsync_files, replace_dir, temp_sibling
from mergesearch.merging.buffers import nbytes
from mergesearch.merging.direct_io import OutputFile, open_output
from mergesearch.merging.errors import ConfigError, MergeRuntimeError

SAFETENSORS_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


Rows = tuple[int, int]  # a part of a tensor: rows [start, stop) of its first dimension
# what a writer passes with a tensor: called once the sink no longer needs that memory
Done = Callable[[], None]


class TensorSink(Protocol):
    def write(
        self, name: str, tensor: torch.Tensor, *, rows: Rows | None = None, done: Done | None = None
    ) -> None:
        """Take ``tensor`` (or rows ``[start, stop)`` of it, in order); call ``done`` once
        ``tensor``'s memory may be reused."""
        ...

    def destination(self, name: str, rows: Rows | None = None) -> torch.Tensor | None:
        """Memory the merged tensor may be computed into directly (no copy), if any."""
        ...

    def flush(self) -> None:
        """Call the ``done`` of every write that has completed."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# live model


class ModelSink:
    """Copies merged tensors into an existing module's parameters and buffers, in place.

    Tied weights (an ``lm_head`` sharing the embedding) are one tensor in the module: writing the
    embedding writes both. ``close`` checks that every tensor of the module received a value, so a
    search never evaluates a model with stale weights from the previous trial.

    A parameter in host memory that no other name shares is offered as the ``destination`` of
    its merged tensor, so the merge computes straight into the model. On a GPU, tensors arrive
    in (pinned) host buffers and are copied without blocking; a buffer is handed back
    (``done``) once its copy has finished, so copying overlaps the next tensor's merge.
    """

    def __init__(self, model: torch.nn.Module):
        self.targets: dict[str, torch.Tensor] = dict(model.state_dict(keep_vars=True))
        self.written: set[int] = set()
        shared = Counter(t.data_ptr() for t in self.targets.values())
        self._alone = {n for n, t in self.targets.items() if shared[t.data_ptr()] == 1}
        self._copying: list[tuple[Any, Done | None]] = []  # (CUDA event, done)

    def destination(self, name: str, rows: Rows | None = None) -> torch.Tensor | None:
        target = self.targets.get(name)
        if target is None or name not in self._alone or target.device.type != "cpu":
            return None
        if not target.is_contiguous() or not target.dim():
            return None
        return target.data if rows is None else target.data[rows[0] : rows[1]]

    def write(
        self, name: str, tensor: torch.Tensor, *, rows: Rows | None = None, done: Done | None = None
    ) -> None:
        target = self.targets.get(name)
        if target is None:
            raise MergeRuntimeError(
                f"merged tensor {name!r} has no counterpart in the live model; the model was built "
                "for another architecture"
            )
        shape = tuple(target.shape)
        if rows is not None:
            shape = (rows[1] - rows[0], *shape[1:])
        if tuple(tensor.shape) != shape:
            raise MergeRuntimeError(
                f"merged tensor {name!r} has shape {list(tensor.shape)}, the live model expects "
                f"{list(shape)}"
            )
        dest = target.data if rows is None else target.data[rows[0] : rows[1]]
        self.written.add(target.data_ptr())
        if _same_memory(dest, tensor):  # computed in place (``destination``)
            if done is not None:
                done()
            return
        if dest.device.type == "cuda":
            with torch.no_grad():
                dest.copy_(tensor, non_blocking=tensor.is_pinned())
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(dest.device))
            self._copying.append((event, done))
            self._finish_copies(wait=False)
            return
        with torch.no_grad():
            dest.copy_(tensor)
        if done is not None:
            done()

    def _finish_copies(self, *, wait: bool) -> None:
        while self._copying and (wait or self._copying[0][0].query()):
            event, done = self._copying.pop(0)
            event.synchronize()
            if done is not None:
                done()

    def flush(self) -> None:
        self._finish_copies(wait=True)

    def close(self) -> None:
        self.flush()
        stale = [n for n, t in self.targets.items() if t.data_ptr() not in self.written]
        if stale:
            raise MergeRuntimeError(
                f"the merge did not produce {len(stale)} tensors of the live model "
                f"(first: {stale[0]!r}); the model and the merge disagree on architecture"
            )


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.data_ptr() == b.data_ptr() and a.shape == b.shape


# --------------------------------------------------------------------------------------------
# disk


def parse_size(text: str | int) -> int:
    """``"5G"``, ``"500M"``, ``"64k"``, ``"2GiB"``, plain bytes -> bytes (decimal like the Hub)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    raw = text.strip().upper().removesuffix("B")
    binary = raw.endswith("I")
    raw = raw.removesuffix("I")
    unit = raw[-1] if raw and raw[-1] in units else ""
    number = raw[: len(raw) - len(unit)] if unit else raw
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(
            f"--out-shard-size: cannot read {text!r}; use bytes or a k/M/G suffix, e.g. 5G"
        ) from None
    factor = 1024 ** list(units).index(unit) if binary else units[unit]
    size = int(value * factor)
    if size <= 0:
        raise ConfigError(f"--out-shard-size: {text!r} must be positive")
    return size


@dataclass
class _Shard:
    filename: str
    names: list[str]
    header: bytes


def _layout(
    entries: list[tuple[str, tuple[int, ...], torch.dtype]], shard_size: int
) -> list[_Shard]:
    groups: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
    used = 0
    for entry in entries:
        size = nbytes(entry[1], entry[2])
        if groups[-1] and used + size > shard_size:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += size
    shards = []
    for i, group in enumerate(groups):
        filename = (
            "model.safetensors"
            if len(groups) == 1
            else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        )
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in group:
            end = offset + nbytes(shape, dtype)
            header[name] = {
                "dtype": SAFETENSORS_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, end],
            }
            offset = end
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        shards.append(_Shard(filename, [g[0] for g in group], raw))
    return shards


@dataclass
class _Item:
    shard: _Shard
    name: str
    tensor: torch.Tensor
    first: bool  # the tensor's first bytes
    last: bool  # the tensor's last bytes
    done: Done | None


class DiskSink:
    """Streams tensors into sharded safetensors inside a temporary folder.

    Call ``write`` in exactly the order of ``entries``; ``finish`` writes the index and
    renames the folder into place; ``close`` without ``finish`` removes the temporary folder.
    """

    def __init__(
        self,
        out_dir: Path,
        entries: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
        *,
        shard_size: int,
        overwrite: bool = False,
    ):
        self.out_dir = Path(out_dir).absolute()
        if self.out_dir.exists() and not overwrite:
            raise ConfigError(
                f"{self.out_dir}: output folder exists; pass --overwrite to replace it"
            )
        self.overwrite = overwrite
        self.entries = list(entries)
        self.shards = _layout(self.entries, shard_size)
        self.expected = {name: (shape, dtype) for name, shape, dtype in self.entries}
        cleanup_stale_temps(self.out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_sibling(self.out_dir)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        try:
            self.tmp.mkdir()
        except OSError as err:
            raise ConfigError(
                f"{self.out_dir.parent}: cannot create the output ({err.strerror})"
            ) from None
        self._order = [(shard, name) for shard in self.shards for name in shard.names]
        self._position = 0
        self._row = 0  # rows of the current tensor already queued (written in parts)
        self._file: OutputFile | None = None
        self._finished = False
        # a few tensors (or parts) wait for the writer; the engine's bound counts them
        self._queue: queue.Queue[_Item | None] = queue.Queue(4)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def folder(self) -> Path:
        """Where the other files (config, tokenizer) go before ``finish``."""
        return self.tmp

    def destination(self, name: str, rows: Rows | None = None) -> torch.Tensor | None:
        return None  # the bytes go to a file: the merge computes into its own buffers

    def flush(self) -> None:
        return None  # the writer thread calls each ``done`` as soon as it has written

    def write(
        self, name: str, tensor: torch.Tensor, *, rows: Rows | None = None, done: Done | None = None
    ) -> None:
        """Queue ``tensor`` (whole, or its next rows) for writing; the caller must not modify
        it until ``done`` is called."""
        self._raise_writer_error()
        shard, expected = self._order[self._position]
        if name != expected:
            raise MergeRuntimeError(
                f"internal: tensor {name!r} written out of order (want {expected!r})"
            )
        shape, dtype = self.expected[name]
        start, stop = rows if rows is not None else (0, shape[0] if shape else 0)
        want = (stop - start, *shape[1:]) if rows is not None else shape
        if start != self._row or tuple(tensor.shape) != want or tensor.dtype != dtype:
            raise MergeRuntimeError(
                f"internal: tensor {name!r} rows {start}-{stop} are {tensor.dtype} "
                f"{list(tensor.shape)}, planned {dtype} {list(want)} from row {self._row}"
            )
        first = start == 0
        last = rows is None or stop == shape[0]
        self._row = 0 if last else stop
        if last:
            self._position += 1
        if self._writer is None:
            self._writer = threading.Thread(target=self._drain, name="sink-writer", daemon=True)
            self._writer.start()
        self._queue.put(_Item(shard, name, tensor, first, last, done))

    def _drain(self) -> None:
        """Writer thread: write queued tensors in order until the ``None`` sentinel."""
        while (item := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._write_now(item)
            except BaseException as err:  # re-raised in the merging thread
                self._error = err
            finally:
                if item.done is not None:
                    item.done()

    def _write_now(self, item: _Item) -> None:
        shard = item.shard
        if item.first and shard.names[0] == item.name:
            self._open(shard)
        assert self._file is not None
        self._file.write(item.tensor)
        if item.last and shard.names[-1] == item.name:
            self._file.close()
            self._file = None

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _open(self, shard: _Shard) -> None:
        self._file = open_output(self.tmp / shard.filename)
        self._file.write(len(shard.header).to_bytes(8, "little") + shard.header)

    def finish(self) -> Path:
        self._stop_writer()
        self._raise_writer_error()
        if self._position != len(self._order):
            raise MergeRuntimeError(
                f"internal: {len(self._order) - self._position} planned tensors were never written"
            )
        if len(self.shards) > 1:
            weight_map = {name: s.filename for s in self.shards for name in s.names}
            total = sum(nbytes(shape, dtype) for _, shape, dtype in self.entries)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        fsync_files(self.tmp)
        replace_dir(self.tmp, self.out_dir)
        self._finished = True
        return self.out_dir

    def close(self) -> None:
        self._stop_writer()
        if self._file is not None:
            # an unfinished shard: its folder is removed below, whatever this close writes
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if not self._finished and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
