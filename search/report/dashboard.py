"""optuna-dashboard on a study, read-only, showing what each trial merged.

The dashboard writes nothing: the study is served through a storage that refuses writes
(``distributed.readonly``; an SQLite file is opened read-only by SQLite too), so viewing a study
shared by a team never changes it, and no file appears anywhere. What the dashboard shows was
put there by the search (``optimize.attachments``): each trial's merge config as an artifact of
the trial, the objectives' names, the spec as the study note. The artifacts' bytes are the
trials' ``merge_config`` attributes themselves: ``ConfigArtifacts`` finds the text from the
artifact id, which the search derived from (study, trial, config).
"""

from __future__ import annotations

import io
import logging
import socket
import threading
from dataclasses import dataclass
from typing import BinaryIO

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage

from mergesearch.search import attrs as A
from mergesearch.search.distributed.locate import StudyLocation
from mergesearch.search.distributed.readonly import ReadOnlyError, open_read_only
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize.attachments import artifact_id, artifact_name

log = logging.getLogger(__name__)

__all__ = ["ConfigArtifacts", "Served", "artifact_name", "serve"]


class ConfigArtifacts:
    """An artifact store (Optuna's protocol) that reads each trial's merge config from the
    study: nothing on disk, nothing written."""

    def __init__(self, storage: BaseStorage):
        self.storage = storage
        self._texts: dict[str, str] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        texts = {}
        for study in self.storage.get_all_studies():
            for trial in self.storage.get_all_trials(study._study_id, deepcopy=False):
                text = trial.user_attrs.get(A.MERGE_CONFIG)
                if text:
                    texts[artifact_id(study.study_name, trial.number, text)] = text
        self._texts = texts

    def open_reader(self, artifact_id: str) -> BinaryIO:
        with self._lock:
            if artifact_id not in self._texts:  # a trial that finished since: read them again
                self._refresh()
            text = self._texts.get(artifact_id)
        if text is None:
            raise ArtifactNotFound(f"no merge config has artifact id {artifact_id}")
        return io.BytesIO(text.encode())

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        raise ReadOnlyError(
            "this study is open read-only (mergesearch dashboard): nothing is saved"
        )

    def remove(self, artifact_id: str) -> None:
        raise ReadOnlyError(
            "this study is open read-only (mergesearch dashboard): nothing is saved"
        )


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise SpecError(
                f"--host {host} --port {port}: cannot listen there ({err.strerror}); "
                "pass another --port, or 0 for a free one"
            ) from None


@dataclass(frozen=True)
class Served:
    url: str
    host: str
    port: int


def serve(
    study: optuna.Study,
    location: StudyLocation,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready=None,
) -> None:
    """Run optuna-dashboard on the study, read-only, until interrupted (blocks).

    ``on_ready(Served)`` is called once the address is known, before serving starts.
    """
    from optuna_dashboard import run_server

    if port:
        check_port(host, port)
    else:
        port = free_port(host)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/dashboard/studies/{study._study_id}"
    storage = open_read_only(location.storage_url)
    if on_ready is not None:
        on_ready(Served(url, host, port))
    run_server(storage, host=host, port=port, artifact_store=ConfigArtifacts(storage))
