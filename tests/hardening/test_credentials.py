"""A storage password never leaves the process.

A PostgreSQL role whose password is a sentinel (``.ci/start-postgres.sh`` creates it) runs a
whole search through every command that shows a study: ``search`` (its spec names the URL, as
a user writes it), ``status``, ``report``, ``export``, ``upload`` to the local Hub stand-in,
``dashboard``, and errors that quote the URL. Then every written file, every row of the
database, every log record, every line printed and every byte sent to the Hub is searched for
the sentinel. ``search --workers`` passes the URL to its workers in their environment, never on
a command line that ``ps`` shows to every user.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy
import yaml
from sqlalchemy.pool import NullPool

from mergesearch.search.cli import main
from tests.helpers.hub_stub import HubStub
from tests.helpers.specs import make_spec

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("MERGESEARCH_TEST_POSTGRES_URL")
ROLE, PASSWORD = "mergesearch_sentinel", "pw_SENTINEL_2f7c91d4e8"  # as in .ci/start-postgres.sh
pytestmark = pytest.mark.skipif(
    not PG_URL,
    reason="MERGESEARCH_TEST_POSTGRES_URL is unset: start the server with "
    "`bash .ci/start-postgres.sh` and export the URL (.ci/run does both)",
)


@pytest.fixture
def sentinel_url() -> str:
    """A fresh database reached as the sentinel role: its URL carries the sentinel password."""
    role_url = sqlalchemy.engine.make_url(PG_URL).set(username=ROLE, password=PASSWORD)
    admin = sqlalchemy.create_engine(role_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"ms_secret_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError:
        pytest.skip(f"role {ROLE} is missing: run `bash .ci/start-postgres.sh`")
    try:
        yield role_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _database_text(url: str) -> str:
    """Every row of every table, as text."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = sqlalchemy.inspect(conn).get_table_names()
            rows = [
                repr(row)
                for table in tables
                for row in conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"'))
            ]
    finally:
        engine.dispose()
    assert len(rows) > 20  # the study, its trials, their attributes
    return "\n".join(rows)


def _sent_files(hub: HubStub) -> bytes:
    """What the upload's commits carried, decoded (the NDJSON sends files base64-encoded)."""
    files = b"".join(hub.files("me/merged").values())
    decoded = []
    for body in hub.received:
        for line in body.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            content = item.get("value", {}).get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                decoded.append(base64.b64decode(content))
    return files + b"".join(decoded)


def test_the_storage_password_is_written_nowhere(
    models, sentinel_url, tmp_path, monkeypatch, capsys, caplog
):
    import optuna_dashboard
    from huggingface_hub import constants

    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    paths = {name: str(models[name]) for name in ("base", "a", "b")}
    spec = make_spec(paths, tmp_path, storage=sentinel_url, budget={"trials": 6})
    spec_path = tmp_path / "spec.yaml"  # the user's own file: the one place the password is
    spec_path.write_text(yaml.safe_dump(spec))
    printed = []

    def run(*argv: str, code: int = 0) -> None:
        assert main(list(argv)) == code, argv
        captured = capsys.readouterr()
        printed.append(captured.out + captured.err)

    run("search", str(spec_path), "--no-progress")
    run("status", sentinel_url)
    assert f"{ROLE}:***@" in printed[-1]
    run("status", sentinel_url, "--study", "nope", code=2)
    assert f"{ROLE}:***@" in printed[-1]
    run("search", str(spec_path), "--storage", sentinel_url.replace("5432", "9"), code=2)
    run("report", sentinel_url, "--out", str(tmp_path / "report"))
    run("export", sentinel_url, "--out", str(tmp_path / "best"), "--no-progress")
    with HubStub() as hub:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the evaluators set them
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        run("upload", str(tmp_path / "best"), "me/merged")
        sent = b"".join(hub.received) + _sent_files(hub)
    served = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: served.update(kw))
    run("dashboard", sentinel_url)
    assert served["host"] == "127.0.0.1"

    secret = PASSWORD.encode()
    assert b"README.md" in sent and secret not in sent
    assert "```yaml" in (tmp_path / "best" / "README.md").read_text()  # the card has the spec
    assert PASSWORD not in "\n".join(printed)
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != spec_path]
    assert (tmp_path / "report" / "report.html") in written
    for path in written:
        assert secret not in path.read_bytes(), path
    assert PASSWORD not in _database_text(sentinel_url)
    assert not (tmp_path / "results").exists()  # the dashboard of a server study wrote nothing


def test_workers_get_the_url_outside_their_command_line(models, sentinel_url, tmp_path):
    paths = {name: str(models[name]) for name in ("base", "a", "b")}
    spec = make_spec(paths, tmp_path, budget={"trials": 6})
    del spec["storage"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    argv = [sys.executable, "-m", "mergesearch", "search", str(tmp_path / "spec.yaml")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MERGESEARCH_STORAGE": sentinel_url}
    proc = subprocess.Popen(
        [*argv, "--workers", "2", "--no-progress"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    command_lines, parent = [], psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):  # a worker ended between listing and reading
            command_lines += [" ".join(c.cmdline()) for c in parent.children(recursive=True)]
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert any("search" in line for line in command_lines)  # the workers were seen
    assert all(PASSWORD not in line for line in command_lines)
    assert PASSWORD not in out + err and f"{ROLE}:***@" in out
    assert not (tmp_path / "results").exists()  # the URL from the environment was used
