"""Outputs that appear complete or not at all: built under a temporary sibling, renamed in.

A reader (a user, a resumed search, mergekit) must never find a half-written model, report or
manifest that looks finished. Every output is therefore written under a hidden sibling name,
``.<name>.mergesearch-partial-<pid><suffix>``, and renamed over the final name when complete;
renames within one folder are atomic. The pid in the name tells whose temporary it is, so the
next writer removes those of processes that died (``cleanup_stale_temps``) and leaves those of
live ones alone. The final name's suffix is kept at the end because some writers (matplotlib)
choose the file format from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".mergesearch-partial-"


def temp_sibling(final: Path, *, aside: bool = False) -> Path:
    """The temporary name of ``final`` for this process; ``aside`` names the old copy that a
    replacement moves out of the way before it is removed."""
    final = Path(final)
    tag = "old-" if aside else ""
    return final.parent / f".{final.name}{TEMP_MARK}{tag}{os.getpid()}{final.suffix}"


def atomic_write_bytes(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically; returns the number of bytes written."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def atomic_write_text(path: Path, text: str) -> int:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the number of bytes written."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed over ``path`` when the block
    ends without an error, removed when it raises."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_files(folder: Path, names: list[str] | None = None) -> None:
    """Flush the files in ``folder`` (all, or ``names``) to disk before a rename publishes them."""
    paths = [folder / n for n in names] if names is not None else list(folder.iterdir())
    for path in paths:
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename folder ``tmp`` to ``final``; an existing ``final`` is moved aside first, then removed."""
    old = None
    if final.exists():
        old = temp_sibling(final, aside=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cleanup_stale_temps(final: Path) -> None:
    """Remove temporaries of ``final`` left by killed processes (their pid is gone)."""
    parent = final.parent
    if not parent.is_dir():
        return
    owner = re.compile(rf"^\.{re.escape(final.name)}{re.escape(TEMP_MARK)}(?:old-)?(\d+)")
    for entry in parent.iterdir():
        match = owner.match(entry.name)
        if match is None:
            continue
        pid = int(match[1])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
