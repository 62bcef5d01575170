"""``mergesearch export``: the trial's candidate, tensor for tensor, atomically, with YAML and card."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from mergesearch import merging
from mergesearch.merging import card
from mergesearch.merging.atomic import TEMP_MARK
from mergesearch.search.cli import main
from tests.helpers.fake_study import make_study
from tests.helpers.tiny_models import load_state


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def _first(study, method: str):
    return next(
        t
        for t in study.trials
        if t.state.name == "COMPLETE"
        and t.user_attrs.get("method") == method
        and "duplicate_of" not in t.user_attrs
    )


def test_export_equals_the_candidate_and_its_yaml_reproduces_it(single, tmp_path, capsys):
    study, results, _ = single
    trial = _first(study, "dare_ties")  # random drops: the seed must travel with the config
    out = tmp_path / "exported"
    argv = ["export", str(results), "--trial", str(trial.number), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert f"exported trial {trial.number} (dare_ties" in capsys.readouterr().out

    config = merging.load_merge_config(yaml.safe_load(trial.user_attrs["merge_config"]))
    assert config.seed == 7
    merger = merging.Merger(cache_bytes=0)
    model = merger.new_model(config)
    merger.merge_into(config, model)  # what the search evaluated
    candidate = model.state_dict()
    exported = load_state(out)
    assert set(exported) == set(candidate)
    for name, tensor in exported.items():
        assert torch.equal(tensor, candidate[name]), name

    text = trial.user_attrs["merge_config"]
    assert (out / "mergekit_config.yml").read_text() == text
    assert not (tmp_path / "exported.yaml").exists()  # one copy of the config, in the folder
    again = tmp_path / "again"
    assert main(["merge", str(out / "mergekit_config.yml"), str(again), "--no-progress"]) == 0
    rebuilt = load_state(again)
    assert all(torch.equal(rebuilt[n], t) for n, t in exported.items())
    other_seed = tmp_path / "seed8"
    argv = ["merge", str(out / "mergekit_config.yml"), str(other_seed), "--seed", "8"]
    assert main(argv) == 0
    assert not all(torch.equal(load_state(other_seed)[n], t) for n, t in exported.items())

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("the quick brown", return_tensors="pt")
    generated = loaded.generate(
        **prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=2
    )
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 6

    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["tags"] == ["merge", "mergekit", "mergesearch"]
    assert meta["library_name"] == "transformers"
    assert "base_model" not in meta  # the sources are local folders, not Hub ids
    assert f"This is trial {trial.number}" in card and "dare_ties" in card
    assert "| source: rev |" in card and "(heldout)" not in card.split("## Scores")[0]
    assert "```yaml\n" + text.rstrip("\n") + "\n```" in card
    assert "`seed: 7` makes `mergesearch merge` rebuild these exact tensors" in card


def test_default_export_is_the_best_and_refuses_to_overwrite(single, capsys):
    _, results, _ = single
    assert main(["export", str(results), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"to {results / 'best'}" in out
    assert "best of" in out and "(heldout)" in (results / "best" / "README.md").read_text()
    assert (results / "best" / "mergekit_config.yml").is_file()
    assert not (results / "best.yaml").exists()
    assert main(["export", str(results), "--no-progress"]) == 2
    assert "output folder exists; pass --overwrite" in capsys.readouterr().err
    stamp = (results / "best" / "config.json").stat().st_mtime_ns
    assert main(["export", str(results), "--overwrite", "--no-progress"]) == 0
    assert (results / "best" / "config.json").stat().st_mtime_ns >= stamp
    assert not [p for p in results.iterdir() if TEMP_MARK in p.name]


def test_pareto_choices(pareto, tmp_path, capsys):
    study, results, _ = pareto
    picked = {}
    for pick in ("weighted", "knee", "rev", "up"):
        out = tmp_path / pick
        argv = ["export", str(results), "--pick", pick, "--out", str(out), "--no-progress"]
        assert main(argv) == 0, pick
        line = capsys.readouterr().out
        picked[pick] = int(line.split("exported trial ")[1].split()[0])
        assert "Pareto front" in line
    rev = {t.number: t.values[0] for t in study.trials if t.number in picked.values()}
    assert rev[picked["rev"]] == max(rev.values())
    assert main(["export", str(results), "--pick", "revv", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'rev'" in capsys.readouterr().err


def test_bad_trials_are_refused(single, tmp_path, capsys):
    study, results, _ = single
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert main(["export", str(results), "--trial", str(failed.number)]) == 2
    assert "is FAIL (merge: NonFiniteError" in capsys.readouterr().err
    assert main(["export", str(results), "--trial", "999"]) == 2
    assert "no trial 999" in capsys.readouterr().err
    assert not (tmp_path / "best").exists()


def test_card_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for name, lic in (("a", "apache-2.0"), ("b", "apache-2.0"), ("c", "mit")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(f"---\nlicense: {lic}\n---\n# {name}\n")
    monkeypatch.chdir(tmp_path)
    same = merging.load_merge_config(
        {"merge_method": "linear", "models": [{"model": "a"}, {"model": "b"}, {"model": "org/x"}]}
    )
    meta = card.card_data(same).to_dict()
    assert meta["base_model"] == ["org/x"] and meta["base_model_relation"] == "merge"
    assert meta["license"] == "apache-2.0"
    mixed = merging.load_merge_config(
        {"merge_method": "linear", "models": [{"model": "a"}, {"model": "c"}]}
    )
    meta = card.card_data(mixed).to_dict()
    assert meta["license"] == "other" and "base_model" not in meta


@pytest.mark.slow
def test_killed_export_leaves_nothing_complete(tmp_path, single):
    """SIGKILL while the shards are written: no folder that looks complete, and the next
    export cleans up and succeeds."""
    _, results, _ = make_study(
        tmp_path / "big",
        name="big",
        n_search=2,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=8,
    )
    out = tmp_path / "model"
    argv = [sys.executable, "-m", "mergesearch", "export", str(results), "--out", str(out)]
    argv += ["--out-shard-size", "2M", "--no-progress", "--threads", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = tmp_path / f".model{TEMP_MARK}{proc.pid}"
    deadline = time.monotonic() + 120
    shards = []
    while not shards:
        assert proc.poll() is None, f"export ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "export never started writing"
        shards = list(staging.glob("*/*.safetensors")) if staging.exists() else []
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers and all(TEMP_MARK in name for name in leftovers)

    assert main(["export", str(results), "--out", str(out), "--no-progress"]) == 0
    assert (out / "README.md").is_file() and (out / "mergekit_config.yml").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_real_search_study_reports_and_exports_its_candidate(family, tmp_path, capsys):
    """A study made by ``run_search`` (the probe evaluator scores in microseconds): report,
    dashboard artifacts and export read it, and the export equals the evaluated candidate."""
    from mergesearch.search import run_search
    from mergesearch.search.distributed.locate import open_study
    from mergesearch.search.optimize.attachments import artifact_meta
    from tests.helpers import probe
    from tests.helpers.specs import make_spec

    probe.CAPTURE = True
    spec = make_spec(family, tmp_path, methods=["dare_ties", "linear"], budget={"trials": 9})
    result = run_search(spec, progress=False)
    evaluated = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    evaluated = [t for t in evaluated if "duplicate_of" not in t.user_attrs]
    snapshots = dict(zip((t.number for t in evaluated), probe.SNAPSHOTS, strict=True))

    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert 'id="plot-history"' in page and 'id="plot-profile"' in page
    study, _ = open_study(str(tmp_path))
    # the search attached each trial's merge config for the dashboard, as it ran
    for trial in study.trials:
        key, meta = artifact_meta("t", trial.number, trial.user_attrs["merge_config"])
        assert trial.system_attrs[key] == meta

    assert main(["export", str(tmp_path), "--no-progress"]) == 0
    number = int(capsys.readouterr().out.split("exported trial ")[1].split()[0])
    assert number == result.summary.best[0].number
    exported = load_state(tmp_path / "best")
    assert set(exported) == set(snapshots[number])
    assert all(torch.equal(exported[n], snapshots[number][n]) for n in exported)
