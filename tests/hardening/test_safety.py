"""Safety: no code from a checkpoint runs, the Hub token lands nowhere, the dashboard stays local.

- A pickle checkpoint whose unpickling would create a file is refused without ``--allow-pickle``
  and, with it, loaded with ``weights_only=True``, which rejects the payload.
- A model folder that ships its own modelling/tokenizer code (``auto_map``) is merged and
  searched with the built-in classes; its code is never imported.
- ``HF_TOKEN`` goes through a search, an export and an upload (to the local Hub stand-in) and
  appears in no file mergesearch writes and in no study or trial attribute.
- ``mergesearch dashboard`` listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import torch
import yaml

from mergesearch.search.cli import main
from tests.helpers.hub_stub import HubStub
from tests.helpers.specs import make_spec

REPO = Path(__file__).resolve().parents[2]
SENTINEL = "hf_HARDENINGsentinelTOKEN0123456789abcdef"


def _ties(models: dict[str, Path], *names: str | Path) -> dict:
    entries = [{"model": str(models.get(n, n)), "parameters": {"weight": 0.5}} for n in names]
    return {"models": entries, "merge_method": "linear"}


def test_malicious_pickle_never_runs(malicious, models, tmp_path, capsys):
    folder, marker = malicious
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(_ties(models, "a", folder)))
    out = tmp_path / "out"

    assert main(["merge", str(config), str(out), "--no-progress"]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["merge", str(config), str(out), "--no-progress", "--allow-pickle"]) == 2
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "pytorch_model.bin" in err
    assert not marker.exists() and not out.exists()

    # the payload is real: an unsafe load would have run it
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()
    marker.unlink()


@pytest.fixture
def remote_code(models, tmp_path) -> tuple[Path, Path]:
    """A copy of model ``a`` whose config and tokenizer point at code in the folder; importing
    that code creates the marker."""
    folder = tmp_path / "remote"
    shutil.copytree(models["a"], folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        "class EvilConfig(LlamaConfig): pass\n"
        "class EvilModel(LlamaForCausalLM): pass\n"
        "class EvilTokenizer(PreTrainedTokenizerFast): pass\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder, marker


def test_remote_code_in_a_checkpoint_is_never_imported(remote_code, models, tmp_path):
    folder, marker = remote_code
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(_ties(models, folder, "b")))
    assert main(["merge", str(config), str(tmp_path / "out"), "--no-progress"]) == 0

    paths = {"base": str(folder), "a": str(models["a"]), "b": str(models["b"])}
    spec = make_spec(paths, tmp_path / "results", budget={"trials": 5})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["search", str(tmp_path / "spec.yaml"), "--no-progress"]) == 0
    assert not marker.exists()


def test_the_token_is_written_nowhere(models, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    paths = {"base": str(models["base"]), "a": str(models["a"]), "b": str(models["b"])}
    results = tmp_path / "results"
    spec = make_spec(paths, results, budget={"trials": 6})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["search", str(tmp_path / "spec.yaml"), "--no-progress"]) == 0
    assert main(["report", str(results)]) == 0
    assert main(["export", str(results), "--no-progress"]) == 0
    with HubStub() as hub:
        # the evaluators switched this process offline (evaluators.runtime): switch it back
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        assert main(["upload", str(results / "best"), "me/merged"]) == 0
        assert hub.authorizations == {f"Bearer {SENTINEL}"}
    captured = capsys.readouterr()
    assert SENTINEL not in captured.out + captured.err

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "study.db" for p in written) and (results / "best").is_dir()
    for path in written:
        assert SENTINEL.encode() not in path.read_bytes(), path
    study = optuna.load_study(study_name="t", storage=spec["storage"])
    attrs = [study.user_attrs]
    attrs += [a for t in study.trials for a in (t.user_attrs, t.system_attrs, t.params)]
    assert SENTINEL not in json.dumps(attrs, default=str)


def test_dashboard_listens_on_localhost_by_default(study, tmp_path, monkeypatch):
    import optuna_dashboard

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "mergesearch", "dashboard", str(study), "--study", "fake"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("dashboard of study 'fake': http://127.0.0.1:"), line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        listening = []
        for _ in range(600):  # the server starts after the line is printed
            conns = psutil.Process(proc.pid).net_connections(kind="tcp")
            listening = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
            if listening:
                break
            assert proc.poll() is None
            time.sleep(0.05)
        assert listening and all(a.ip == "127.0.0.1" and a.port == port for a in listening)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        proc.stdout.close()

    seen = {}

    def fake_run_server(storage, host, port, **kwargs):
        seen.update(host=host, port=port)

    monkeypatch.setattr(optuna_dashboard, "run_server", fake_run_server)
    assert main(["dashboard", str(study), "--host", "0.0.0.0", "--port", "0"]) == 0
    assert seen["host"] == "0.0.0.0"


BOMB_PROBE = """
import resource, sys, time
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.yaml_io import read_yaml

peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, after the imports
started = time.perf_counter()
try:
    read_yaml(sys.argv[1])
    message = "accepted"
except ConfigError as err:
    message = str(err)
seconds = time.perf_counter() - started
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
print(f"{seconds:.4f} {grown:.1f} {message}")
"""


@pytest.mark.parametrize("levels", [9, 10, 12])
def test_an_alias_bomb_is_refused_in_under_a_second_and_100_mb(levels, tmp_path):
    """The issue's bomb (9 levels of 9 aliases: 82 s and 8.5 GB before the bounded reader),
    one level more (which exhausted the machine) and a bigger one, each read by a fresh
    process: refused, in under a second, with the peak memory grown by under 100 MB."""
    from tests.helpers.hostile_yaml import alias_bomb

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(levels=levels, width=9))
    assert bomb.stat().st_size < 1200
    probe = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(bomb)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds, grown_mb, message = probe.stdout.strip().split(" ", 2)
    assert "alias bomb" in message, probe.stdout + probe.stderr
    assert float(seconds) < 1.0 and float(grown_mb) < 100, probe.stdout
