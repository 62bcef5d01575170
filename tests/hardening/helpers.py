"""Small helpers of the hardening tests: run the real CLI, snapshot a folder, build a payload."""

from __future__ import annotations

from pathlib import Path

import torch


class Payload:
    """Unpickling this creates ``marker``: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_pickle(folder: Path, marker: Path) -> Path:
    """A ``pytorch_model.bin`` in torch's zip format whose unpickling would create ``marker``."""
    path = folder / "pytorch_model.bin"
    torch.save({"model.embed_tokens.weight": Payload(marker)}, path, pickle_protocol=2)
    return path


# side files that come and go with an open storage (SQLite's WAL, the schema lock): not output
SIDE_FILES = ("-wal", "-shm", ".lock")


def tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative), to show that a refused command wrote nothing."""
    paths = (p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    return {p for p in paths if not p.endswith(SIDE_FILES)}


def slow_score(model, tokenizer, *, limit=None):
    """The probe's score, after a pause, leaving one file per call in ``$HARDENING_CALLS``:
    a search scored by it is mid-trial long enough to be interrupted, and says when."""
    import os
    import time

    from tests.helpers import probe

    calls = Path(os.environ["HARDENING_CALLS"])
    calls.mkdir(exist_ok=True)
    (calls / str(len(list(calls.iterdir())))).touch()
    time.sleep(float(os.environ.get("HARDENING_SLEEP", "1")))
    return probe.score(model, tokenizer, limit=limit)


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256): a refused command changed no byte.
    Side files of an open storage are left out, as in ``tree``."""
    import hashlib

    found = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not name.endswith(SIDE_FILES):
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            found[name] = "folder"
    return found
