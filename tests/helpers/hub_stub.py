"""A local stand-in for the parts of the Hugging Face Hub API that an upload uses.

The real ``huggingface_hub`` client talks to it (``HF_ENDPOINT=http://127.0.0.1:PORT``), so a
test exercises the same requests as a real upload: ``POST /api/repos/create``, ``POST
/api/models/{repo}/preupload/{rev}`` (every file answered ``regular``: sent inline, no LFS or
Xet), ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 contents) and ``POST
/api/models/{repo}/branch/{name}`` and ``POST /api/validate-yaml`` (the card's front matter,
checked before anything is sent). Pull requests: ``POST /api/models/{repo}/discussions`` opens
one on a new ``refs/pr/<n>`` branch and ``GET .../discussions/<n>`` describes it (what the
client does for ``create_pr``), and a commit with ``?create_pr=1`` opens one too. Each commit's
message is kept (``Repo.messages``). Anything else is answered 404 and recorded in
``unhandled``, so a client upgrade that needs a new endpoint shows up as a clear test failure.

    with HubStub() as hub:
        ...  # upload to hub.endpoint
        hub.files("user/model")  # {path: bytes} on main
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"
ROUTES = (
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "validate-yaml", re.compile(r"^/api/validate-yaml$")),
    ("POST", "preupload", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$")),
    ("POST", "commit", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$")),
    ("POST", "branch", re.compile(rf"^/api/models/{REPO}/branch/(?P<rev>[^/]+)$")),
    ("POST", "open-pr", re.compile(rf"^/api/models/{REPO}/discussions$")),
    ("GET", "pr", re.compile(rf"^/api/models/{REPO}/discussions/(?P<num>\d+)$")),
)


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # each commit's summary
    pull_requests: int = 0


class HubStub:
    """A threaded HTTP server on 127.0.0.1 with in-memory repositories."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.received: list[bytes] = []  # every request as sent: headers and body
        self.unhandled: list[tuple[str, str]] = []
        self.authorizations: set[str] = set()
        self.forbidden: set[str] = set()  # repo ids whose creation is refused (403)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision])

    # ---------------------------------------------------------------- endpoint logic

    def handle(self, kind: str, match: re.Match, body: bytes, query: str = "") -> tuple[int, Any]:
        if kind == "create":
            data = json.loads(body)
            repo_id = (
                f"{data['organization']}/{data['name']}"
                if data.get("organization")
                else data["name"]
            )
            if repo_id in self.forbidden:
                return 403, {
                    "error": f"You don't have the rights to create a model under {repo_id}"
                }
            with self.lock:
                if repo_id in self.repos:
                    return 409, {
                        "error": "You already created this model repo",
                        "url": self._url(repo_id),
                    }
                private = data.get("visibility") == "private" or bool(data.get("private"))
                self.repos[repo_id] = Repo(private=private)
            return 200, {"url": self._url(repo_id), "name": repo_id}
        if kind == "validate-yaml":
            return _validate_card(json.loads(body)["content"])
        repo_id = unquote(match["repo"])
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": f"Repository not found: {repo_id}"}
        if kind == "open-pr":
            with self.lock:
                return 200, {"num": self._open_pr(repo)}
        if kind == "pr":
            return self._pr(repo_id, repo, int(match["num"]))
        rev = unquote(match["rev"])
        if kind == "branch":
            with self.lock:
                if rev in repo.branches:
                    return 409, {"error": f"Reference already exists: {rev}"}
                repo.branches[rev] = dict(repo.branches["main"])
            return 200, {}
        if rev not in repo.branches:
            return 404, {"error": f"Invalid rev id: {rev}"}
        if kind == "preupload":
            files = json.loads(body)["files"]
            return 200, {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in files
                ]
            }
        return self._commit(repo_id, repo, rev, body, create_pr="create_pr=1" in query)

    def _commit(
        self, repo_id: str, repo: Repo, rev: str, body: bytes, *, create_pr: bool = False
    ) -> tuple[int, Any]:
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        message = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unsupported encoding {value.get('encoding')!r}"}
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            elif key == "header":
                message = value.get("summary", "")
            else:
                return 400, {"error": f"this stand-in cannot take {key!r} (LFS/Xet) entries"}
        oid = hashlib.sha1(body).hexdigest()
        answer: dict[str, Any] = {}
        with self.lock:
            if create_pr:
                num = self._open_pr(repo)
                rev = f"refs/pr/{num}"
                answer["pullRequestUrl"] = f"{self._url(repo_id)}/discussions/{num}"
            files = repo.branches[rev]
            for path in deleted:
                files.pop(path, None)
            files.update(added)
            repo.commits.append(oid)
            repo.messages.append(message)
        return 200, {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self._url(repo_id)}/commit/{oid}",
            **answer,
        }

    def _open_pr(self, repo: Repo) -> int:
        """A new pull request's number; its branch starts as main (call under the lock)."""
        repo.pull_requests += 1
        repo.branches[f"refs/pr/{repo.pull_requests}"] = dict(repo.branches["main"])
        return repo.pull_requests

    def _pr(self, repo_id: str, repo: Repo, num: int) -> tuple[int, Any]:
        if not 0 < num <= repo.pull_requests:
            return 404, {"error": f"Discussion not found: {num}"}
        return 200, {
            "title": f"pull request {num}",
            "num": num,
            "author": {"name": "me"},
            "createdAt": "2026-01-01T00:00:00.000Z",
            "status": "draft",
            "repo": {"name": repo_id, "type": "model"},
            "isPullRequest": True,
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "events": [],
        }

    def _url(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"


def _validate_card(content: str) -> tuple[int, Any]:
    """Like the Hub: a README's front matter must be a YAML mapping (it may be absent)."""
    match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
    if match is None:
        return 200, {"errors": [], "warnings": []}
    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError as err:
        return 400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}
    if not isinstance(data, dict):
        return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}
    return 200, {"errors": [], "warnings": []}


def _handler(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                return self.rfile.read(length)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            return b""

        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _dispatch(self) -> None:
            path, _, query = self.path.partition("?")
            body = self._body()
            with stub.lock:
                stub.requests.append((self.command, path))
                stub.received.append(f"{self.requestline}\n{self.headers}".encode() + body)
                auth = self.headers.get("Authorization")
                if auth:
                    stub.authorizations.add(auth)
            for method, kind, pattern in ROUTES:
                match = pattern.match(path)
                if match and self.command == method:
                    self._answer(*stub.handle(kind, match, body, query))
                    return
            with stub.lock:
                stub.unhandled.append((self.command, path))
            self._answer(404, {"error": f"stand-in does not serve {self.command} {path}"})

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    return Handler
