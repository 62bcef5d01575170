"""The guard every command that replaces a folder passes first: never delete what a user owns.

An output folder is replaced as a whole (``atomic.replace_dir``), so a wrong path is a lost
folder: ``merge cfg.yaml . --overwrite`` would take the working directory, the sources and the
config with it. ``check_output`` refuses, whatever ``--overwrite`` says, an output that

- is, or contains, anything on the protected list: the working directory, the home folder,
  every source model, the config or spec file, the study's database and results folder;
- lies inside a source model (the output would be written into it);
- is a file (an output is a folder; replacing a file is never what was meant).

An output *inside* the working directory, the home folder or the results folder is the usual
case (``results/<study>/best``) and stays allowed. Paths are compared after resolving symlinks,
so a link to a source is the source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mergesearch.merging.errors import ConfigError


@dataclass(frozen=True)
class Protected:
    """Something the output must not replace: ``what`` names it in the refusal."""

    what: str
    path: Path
    no_output_inside: bool = False  # a model folder: writing into it is refused too


def _real(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def surroundings() -> list[Protected]:
    """The working directory and the home folder: protected for every command."""
    found = []
    for what, get in (("the working directory", Path.cwd), ("your home folder", Path.home)):
        try:
            found.append(Protected(what, get()))
        except (OSError, RuntimeError):  # a deleted cwd, no HOME: nothing to protect there
            continue
    return found


def source_models(folders: Iterable[tuple[str, Path]]) -> list[Protected]:
    """Source model folders, as ``(reference, folder)`` pairs."""
    return [Protected(f"source model {ref!r}", Path(folder), True) for ref, folder in folders]


def existing_file(what: str, path: str | Path | None) -> list[Protected]:
    """``path`` when it names an existing file (a config given as a dict has none)."""
    if path is None or not Path(path).is_file():
        return []
    return [Protected(what, Path(path))]


def check_output(out: Path, protected: Iterable[Protected], *, flag: str = "output") -> None:
    """``ConfigError`` (one line, exit 2) when replacing ``out`` would harm a protected path."""
    target = _real(out)
    for item in [*surroundings(), *protected]:
        guarded = _real(item.path)
        if target == guarded:
            problem = f"is {item.what} ({item.path})"
        elif target in guarded.parents:
            problem = f"contains {item.what} ({item.path})"
        elif item.no_output_inside and guarded in target.parents:
            problem = f"is inside {item.what}"
        else:
            continue
        raise ConfigError(
            f"{out}: {flag} folder {problem}; it is never replaced, whatever --overwrite says: "
            "choose a new folder"
        )
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{out}: is a file, not a folder; choose a folder for the output")
