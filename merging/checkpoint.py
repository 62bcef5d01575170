"""A lazy view over one Hugging Face model folder: names, shapes and dtypes from headers, tensors
read one at a time from safetensors files.

Tensors are read with ``os.preadv`` into a buffer the caller owns (``get``, ``read_rows``), or
mapped (``map_rows``): a copy-on-write map of just the rows asked for, populated at once
(``MADV_POPULATE_READ``). A map of a whole file was tried first and dropped: every page a merge
touched stayed in the process's RSS for as long as the map lived, and the page faults landed on
the compute thread. A map per read lives as long as its tensor and is faulted in by the thread
that maps it (the engine's reader), like a ``preadv``, but without ``preadv``'s copy out of the
page cache: on this kind of machine that copy costs 0.15 s of system CPU a GB, the mapping next
to nothing. A source streamed block by block maps its tensor lazily (``map_lazily``) and drops
the pages behind its pass (``MappedRows.release``). ``MERGESEARCH_MAP=0`` reads every tensor
with ``preadv``.

Only safetensors are read by default. Pickle checkpoints (``pytorch_model*.bin``) can execute
code when unpickled, so they need an explicit opt-in and are then loaded with
``weights_only=True``. Hub ids go through ``huggingface_hub.snapshot_download`` (its cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import mmap
import os
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergesearch.merging.errors import ConfigError

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# what a Hub download needs: weights, configs, tokenizer files
HUB_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int = 0  # absolute byte offset of the data in ``file`` (safetensors only)
    nbytes: int = 0


def _read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header without reading tensor data; corrupt files name themselves.

    Returns the header and the absolute offset where tensor data starts (``data_offsets`` are
    relative to it). Every entry is checked to lie inside the file and to match its shape.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than its 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8 or header_len > 100 * 2**20:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(fh.read(header_len))
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise ConfigError(
            f"{path}: corrupted safetensors file ({err}); re-download or re-save the checkpoint"
        ) from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: corrupted safetensors file (header is not a JSON object)")
    data_len = size - 8 - header_len
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in meta["data_offsets"])
            shape = [int(d) for d in meta["shape"]]
            dtype_name = str(meta["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{path}: corrupted safetensors file (tensor {name!r} has a malformed header "
                "entry); re-download or re-save the checkpoint"
            ) from None
        if end > data_len:
            raise ConfigError(
                f"{path}: truncated safetensors file (tensor {name!r} ends at byte {end}, "
                f"data holds {data_len}); re-download the checkpoint"
            )
        dtype = SAFETENSORS_DTYPES.get(dtype_name)
        expected = math.prod(shape) * (dtype.itemsize if dtype is not None else 0)
        if begin < 0 or (dtype is not None and end - begin != expected):
            raise ConfigError(
                f"{path}: corrupted safetensors file (tensor {name!r} spans bytes "
                f"[{begin}, {end}) but {dtype_name} {shape} needs {expected}); re-download or "
                "re-save the checkpoint"
            )
    return header, 8 + header_len


class Checkpoint:
    """One model folder. ``names`` keeps the checkpoint's order; ``get`` reads one tensor."""

    def __init__(self, folder: Path, *, allow_pickle: bool = False, ref: str | None = None):
        self.folder = Path(folder)
        self.ref = ref or str(folder)
        self.config = self._read_config()
        self.tensors: dict[str, TensorInfo] = {}
        self._fds: dict[Path, int] = {}
        self._fds_lock = threading.Lock()  # the reader thread and streaming workers open files
        self._pickle_state: dict[str, torch.Tensor] | None = None
        if self._index_safetensors():
            return
        if self._index_pickle(allow_pickle):
            return
        raise ConfigError(
            f"{self.folder}: no model.safetensors, sharded safetensors index or pickle checkpoint "
            "found; point to a Hugging Face model folder"
        )

    # -- discovery -----------------------------------------------------------------------------

    def _read_config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        if not path.is_file():
            raise ConfigError(
                f"{self.folder}: no config.json; is this a Hugging Face model folder?"
            )
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None

    def _index_safetensors(self) -> bool:
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ConfigError(f"{index}: invalid index ({err})") from None
            files = sorted({self.folder / f for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise ConfigError(
                        f"{index}: names shard {f.name!r}, which is missing; re-download the model"
                    )
        elif single.is_file():
            files = [single]
        else:
            return False
        for f in files:
            header, data_start = _read_safetensors_header(f)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                dtype = SAFETENSORS_DTYPES.get(meta["dtype"])
                if dtype is None:
                    raise ConfigError(f"{f}: tensor {name!r} has unsupported dtype {meta['dtype']}")
                begin, end = meta["data_offsets"]
                self.tensors[name] = TensorInfo(
                    f, tuple(meta["shape"]), dtype, data_start + begin, end - begin
                )
        return True

    def _index_pickle(self, allow_pickle: bool) -> bool:
        index = self.folder / "pytorch_model.bin.index.json"
        single = self.folder / "pytorch_model.bin"
        if index.is_file():
            files = sorted(
                {self.folder / f for f in json.loads(index.read_text())["weight_map"].values()}
            )
        elif single.is_file():
            files = [single]
        else:
            return False
        if not allow_pickle:
            raise ConfigError(
                f"{self.folder}: only pickle weights (pytorch_model*.bin) found; they can run code "
                "when loaded. Convert to safetensors, or pass --allow-pickle to load them with "
                "weights_only=True"
            )
        state: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
            except Exception as err:  # torch raises many types for bad pickles
                raise ConfigError(f"{f}: cannot load with weights_only=True ({err})") from None
        self._pickle_state = state
        for name, tensor in state.items():
            self.tensors[name] = TensorInfo(f, tuple(tensor.shape), tensor.dtype)
        return True

    # -- access --------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into memory of its own (callers may keep it; nobody mutates it)."""
        if self._pickle_state is not None:
            return self._pickle_state[name]
        info = self.tensors[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        if info.nbytes:
            _pread_exact(self._fd(info.file), out, info.start, info.nbytes, info.file)
        return out

    def read_rows(self, name: str, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Rows ``[start, stop)`` of tensor ``name`` (dim 0) into ``out``, which has their shape
        and dtype: a caller that reuses buffers reads without allocating."""
        if self._pickle_state is not None:
            return out.copy_(self._pickle_state[name][start:stop])
        info = self.tensors[name]
        if not info.shape:  # a scalar is its one "row"
            size, offset = info.nbytes, info.start
        else:
            row = info.nbytes // info.shape[0] if info.shape[0] else 0
            size, offset = (stop - start) * row, info.start + start * row
        if size:
            _pread_exact(self._fd(info.file), out, offset, size, info.file)
        return out

    def map_rows(self, name: str, start: int, stop: int) -> torch.Tensor | None:
        """Rows ``[start, stop)`` of tensor ``name`` as a map of the file, faulted in now (see
        the module's docstring), or None where a map cannot serve them (``map_lazily``)."""
        mapped = self.map_lazily(name, start, stop)
        if mapped is None:
            return None
        mapped.populate()
        return mapped.rows

    def map_lazily(self, name: str, start: int, stop: int) -> MappedRows | None:
        """Rows ``[start, stop)`` of tensor ``name`` mapped, their pages faulted in as they are
        touched; None where a map cannot serve them: a pickle checkpoint, no rows, data not
        aligned to its dtype, ``MERGESEARCH_MAP=0``, or pages the page cache holds less than
        ``MAP_CACHED_SHARE`` of (a map saves no copy then)."""
        info = self.tensors.get(name)
        if self._pickle_state is not None or info is None or not info.shape or not mapping():
            return None
        row = info.nbytes // info.shape[0] if info.shape[0] else 0
        size, offset = (stop - start) * row, info.start + start * row
        if not size or offset % info.dtype.itemsize:
            return None
        fd = self._fd(info.file)
        if os.fstat(fd).st_size < offset + size:  # a map past the end would crash on access
            raise ConfigError(
                f"{info.file}: truncated safetensors file (ends inside tensor {name!r}); "
                "re-download the checkpoint"
            )
        mapped = MappedRows(fd, offset, size, info.dtype, (stop - start, *info.shape[1:]))
        return mapped if mapped.cached_share() >= MAP_CACHED_SHARE else None

    def _fd(self, path: Path) -> int:
        with self._fds_lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._fds[path] = fd
            return fd

    def close(self) -> None:
        """Close the open shard files (reopened on the next ``get``)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        fds = getattr(self, "_fds", None)
        if fds:
            self.close()

    @property
    def num_layers(self) -> int:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(self.config.get(key), int):
                return self.config[key]
        text = self.config.get("text_config") or {}
        if isinstance(text.get("num_hidden_layers"), int):
            return text["num_hidden_layers"]
        raise ConfigError(f"{self.folder}/config.json: no num_hidden_layers; unsupported config")

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))


_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14's value
_LINUX = sys.platform.startswith("linux")
_LIBC = ctypes.CDLL(None, use_errno=True) if _LINUX else None
# A map saves the copy out of the page cache; pages that must come from the disk arrive
# through it by the kernel's fault-time read-around instead of one large ``preadv``, which
# saves nothing (not measured on its own). Below this share of cached pages a tensor is read.
MAP_CACHED_SHARE = 0.9


class MappedRows:
    """Rows of a tensor mapped copy-on-write from its file (``rows``): writing to them never
    reaches the file, but costs a page fault a page, so callers treat them as read-only. The
    map lives as long as ``rows`` (or a view of it) does."""

    def __init__(self, fd: int, offset: int, size: int, dtype: torch.dtype, shape: tuple[int, ...]):
        self._lead = offset % mmap.ALLOCATIONGRANULARITY
        self._pages = mmap.mmap(
            fd, self._lead + size, access=mmap.ACCESS_COPY, offset=offset - self._lead
        )
        flat = torch.frombuffer(self._pages, dtype=torch.uint8, count=size, offset=self._lead)
        self.rows = flat.view(dtype).reshape(shape)
        self._row_bytes = size // shape[0]

    def populate(self) -> None:
        """Fault every page in now, in this thread (a worker touching them later does not)."""
        if _LINUX:  # kernels before 5.14 refuse it: pages then fault in when first touched
            with contextlib.suppress(OSError):
                self._pages.madvise(_MADV_POPULATE_READ)

    def cached_share(self, windows: int = 32, window_pages: int = 16) -> float:
        """The share of the mapped pages that the page cache holds now, from ``windows``
        evenly spread runs of ``window_pages`` pages (``mincore``; asking about every page of
        a 117 MB tensor took 3 ms, as much as a fifth of what the map saves); 1.0 where that
        cannot be asked."""
        if _LIBC is None:
            return 1.0
        page = mmap.PAGESIZE
        start = self.rows.data_ptr() - self._lead  # the map's first byte
        pages = -(-len(self._pages) // page)
        run = min(window_pages, pages)
        firsts = sorted({i * (pages - run) // max(1, windows - 1) for i in range(windows)})
        resident = (ctypes.c_ubyte * run)()
        held = 0
        for first in firsts:
            length = ctypes.c_size_t(min(run * page, len(self._pages) - first * page))
            if _LIBC.mincore(ctypes.c_void_p(start + first * page), length, resident) != 0:
                return 1.0
            held += int(np.count_nonzero(np.frombuffer(resident, np.uint8) & 1))
        return held / (run * len(firsts))

    def release(self, first: int, end: int) -> None:
        """Drop the pages that hold only rows ``[first, end)`` from this process (they stay in
        the page cache, and fault in again if touched): a long pass over a large tensor keeps
        only a window of it in memory."""
        page = mmap.ALLOCATIONGRANULARITY
        low = -(-(self._lead + first * self._row_bytes) // page) * page
        high = (self._lead + end * self._row_bytes) // page * page
        if _LINUX and high > low:
            self._pages.madvise(mmap.MADV_DONTNEED, low, high - low)


def mapping() -> bool:
    """Whether ``map_rows`` maps (``MERGESEARCH_MAP=0`` turns it off)."""
    return os.environ.get("MERGESEARCH_MAP", "1") != "0"


def _pread_exact(fd: int, out: torch.Tensor, start: int, nbytes: int, path: Path) -> None:
    """Fill ``out`` with ``nbytes`` bytes of ``fd`` from ``start``; short files are errors."""
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], start + done)
        if got <= 0:
            raise ConfigError(
                f"{path}: truncated safetensors file (ends inside a tensor at byte "
                f"{start + done}); re-download the checkpoint"
            )
        done += got


def resolve_model_path(ref: str, *, allow_pickle: bool = False) -> Path:
    """A local folder as is; anything else must be a Hub id, fetched through the HF cache."""
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ConfigError(f"{ref}: is a file; give the model folder that contains it")
        return local
    looks_like_hub_id = ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ConfigError(
            f"{ref}: model folder not found; check the path (or give a Hub id org/name)"
        )
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(ref, allow_patterns=patterns))
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        reason = (
            "offline (HF_HUB_OFFLINE is set) and not in the local Hugging Face cache"
            if offline
            else f"could not be downloaded ({type(err).__name__})"
        )
        raise ConfigError(
            f"{ref}: model is {reason}; download it first or give a local folder"
        ) from None


def check_dtypes_agree(name: str, sources: list[tuple[str, Checkpoint, str]]) -> None:
    """Refuse tensor ``name`` when its sources disagree on floating point versus integer.

    The byte length check of the header catches a dtype of the wrong size, not one of the same
    size: a float32 tensor labelled ``I32`` has the right length and reads as integers around
    1e9, which a merge would mix into the floats of the other sources. ``sources`` holds
    ``(reference, checkpoint, tensor name in it)`` for every input of the tensor."""
    infos = {ref: ckpt.tensors[tensor] for ref, ckpt, tensor in sources}
    floating = [ref for ref, info in infos.items() if info.dtype.is_floating_point]
    integer = [ref for ref, info in infos.items() if not info.dtype.is_floating_point]
    if not floating or not integer:
        return
    odd, usual = (
        (integer[0], floating[0]) if len(integer) <= len(floating) else (floating[0], integer[0])
    )
    raise ConfigError(
        f"{infos[odd].file}: tensor {name!r} is stored as {infos[odd].dtype} but {usual!r} "
        f"stores it as {infos[usual].dtype}; a header that names the wrong dtype means a damaged "
        f"checkpoint: re-save or re-download {odd!r}"
    )


class CheckpointSet:
    """Opens each referenced model once per process; shared by every merge of a Merger."""

    def __init__(self, *, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle
        self._open: dict[str, Checkpoint] = {}

    def get(self, ref: str) -> Checkpoint:
        ckpt = self._open.get(ref)
        if ckpt is None:
            path = resolve_model_path(ref, allow_pickle=self.allow_pickle)
            ckpt = Checkpoint(path, allow_pickle=self.allow_pickle, ref=ref)
            self._open[ref] = ckpt
        return ckpt

    def close(self) -> None:
        for ckpt in self._open.values():
            ckpt.close()
