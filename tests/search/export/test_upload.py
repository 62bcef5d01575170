"""``mergesearch upload`` against a local stand-in of the Hub API, with the real client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mergesearch.search.cli import main
from tests.helpers.fake_study import shared_study
from tests.helpers.hub_stub import HubStub

SENTINEL = "hf_SENTINELtokenDoNotLeak0123456789"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    _, results, _ = shared_study(tmp_path_factory)
    out = tmp_path_factory.mktemp("upload") / "model"
    assert main(["export", str(results), "--out", str(out), "--no-progress"]) == 0
    (out / "extra").mkdir()
    (out / "extra" / "notes.txt").write_bytes(b"nested \x00 bytes\n")
    return results, out


def _env(hub: HubStub, home: Path, token: str | None = SENTINEL) -> dict[str, str]:
    # other tests (and the evaluators) switch the whole process offline: the child must not be
    drop = ("HF_", "HUGGING", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_upload_arrives_byte_identical_and_the_token_stays_secret(
    exported, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    results, model = exported
    with HubStub() as hub:
        # the command as a user runs it: endpoint and token from the environment
        argv = ["upload", str(model), "me/merged", "--private", "--revision", "v1"]
        run = subprocess.run(
            [sys.executable, "-m", "mergesearch", *argv],
            env=_env(hub, tmp_path / "hf-home"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert f"uploaded {len(_files(model))} files to {hub.endpoint}/me/merged" in run.stdout
        assert hub.unhandled == []
        assert hub.repos["me/merged"].private
        assert hub.files("me/merged", "v1") == _files(model)
        assert hub.files("me/merged") == {}  # committed to the branch, not main
        assert hub.authorizations == {f"Bearer {SENTINEL}"}  # sent, and only to the Hub

        # again, in this process, to main: the repository exists now (exist_ok)
        monkeypatch.setenv("HF_TOKEN", SENTINEL)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        assert main(["upload", str(model), "me/merged"]) == 0
        assert hub.files("me/merged") == _files(model)

    again = capsys.readouterr()
    for output in (run.stdout, run.stderr, again.out, again.err):
        assert SENTINEL not in output
    for folder in (results, model, tmp_path):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SENTINEL.encode() not in path.read_bytes(), path


def test_upload_refusals(exported, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    _, model = exported
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    assert main(["upload", str(model), "me/merged"]) == 2
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    assert main(["upload", str(tmp_path / "missing"), "me/merged"]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert main(["upload", str(tmp_path), "me/merged"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["upload", str(model), "merged"]) == 2
    assert "give OWNER/NAME" in capsys.readouterr().err
    assert main(["upload", str(model), "me/bad name"]) == 2
    assert "REPO_ID 'me/bad name'" in capsys.readouterr().err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["upload", str(model), "me/merged"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_upload_failure_is_one_line_without_the_token(exported, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    _, model = exported
    with HubStub() as hub:
        hub.forbidden.add("other/merged")
        monkeypatch.setenv("HF_TOKEN", SENTINEL)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        assert main(["upload", str(model), "other/merged"]) == 1
    err = capsys.readouterr().err
    assert "upload of" in err and "failed" in err and "403" in err
    assert SENTINEL not in err and len(err.strip().splitlines()) == 1


def test_upload_flags_follow_hf_upload(exported, tmp_path, monkeypatch, capsys):
    """``--commit-message``, ``--include``/``--exclude`` and ``--create-pr`` as ``hf upload``
    takes them."""
    from huggingface_hub import constants

    _, model = exported
    with HubStub() as hub:
        monkeypatch.setenv("HF_TOKEN", SENTINEL)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        argv = ["upload", str(model), "me/picked", "--commit-message", "first weights"]
        argv += ["--include", "*.json", "--include", "*.safetensors", "--exclude", "tok*"]
        assert main(argv) == 0
        sent = hub.files("me/picked")
        expected = {
            name
            for name in _files(model)
            if name.endswith((".json", ".safetensors")) and not name.startswith("tok")
        }
        assert set(sent) == expected and "config.json" in sent and "README.md" not in sent
        assert f"uploaded {len(expected)} files" in capsys.readouterr().out
        assert hub.repos["me/picked"].messages == ["first weights"]

        assert main(["upload", str(model), "me/picked", "--create-pr"]) == 0
        out = capsys.readouterr().out
        assert f"pull request: {hub.endpoint}/me/picked/discussions/1" in out
        assert hub.files("me/picked", "refs/pr/1") == _files(model)
        assert hub.files("me/picked") == {k: v for k, v in _files(model).items() if k in expected}

        assert main(["upload", str(model), "me/picked", "--include", "*.bin"]) == 2
        assert "--include/--exclude leave no file to upload" in capsys.readouterr().err
        assert main(["upload", str(model), "me/picked", "--create-pr", "--revision", "v2"]) == 2
        assert "drop --revision v2" in capsys.readouterr().err
        assert hub.unhandled == []
