"""``mergesearch status``: the table fits the terminal, one trial in full, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mergesearch.search import attrs as A
from mergesearch.search.cli import main


def _status(capsys, *argv: str) -> str:
    assert main(["status", *argv]) == 0
    return capsys.readouterr().out


def _linear(study):
    return next(
        t
        for t in study.trials
        if t.user_attrs.get(A.METHOD) == "linear" and t.state.name == "COMPLETE"
    )


def test_json_lists_every_trial_with_only_the_parameters_its_method_reads(pareto, capsys):
    study, results, _ = pareto
    records = json.loads(_status(capsys, str(results), "--format", "json"))
    assert [r["number"] for r in records] == [t.number for t in study.trials]
    linear = next(r for r in records if r["number"] == _linear(study).number)
    assert linear["params"] and all(name.startswith("weight.") for name in linear["params"])
    used = study.user_attrs[A.METHOD_PARAMS]["linear"]
    assert set(linear["params"]) == set(used)
    for r in records:
        if r["values"]:  # "weighted" of a Pareto trial: the weighted sum, as in the report
            rev, up = r["values"]
            assert r["weighted"] == pytest.approx(0.5 * rev + 0.5 * up)
    baseline = records[0]
    assert baseline["baseline"] == "base" and baseline["params"] == {}
    assert set(baseline["scores"]) == {"search", "heldout"}


def test_csv_has_one_row_per_trial(single, capsys):
    study, results, _ = single
    rows = list(csv.DictReader(io.StringIO(_status(capsys, str(results), "--format", "csv"))))
    assert len(rows) == len(study.trials)
    assert list(rows[0])[:6] == [
        "number",
        "state",
        "what",
        "weighted",
        "rev (search)",
        "up (search)",
    ]
    best = [r for r in rows if r["best"] == "True"]
    assert len(best) == 1 and float(best[0]["weighted"]) > 0


def test_one_trial_in_full(single, capsys):
    study, results, _ = single
    trial = _linear(study)
    out = _status(capsys, str(results), "--trial", str(trial.number))
    assert out.startswith(f"trial {trial.number}")
    assert "search: rev" in out and "merge config:" in out
    assert "  merge_method: linear" in out
    assert "lambda" not in out.split("merge config:")[0]  # linear reads no lambda
    record = json.loads(_status(capsys, str(results), "--trial", str(trial.number), "-f", "json"))
    assert record["merge_config"] == trial.user_attrs[A.MERGE_CONFIG]
    assert main(["status", str(results), "--trial", "999"]) == 2
    assert "--trial 999: study 'fake' has no such trial" in capsys.readouterr().err


def test_the_table_fits_the_terminal_and_cuts_nothing_in_a_pipe(single, capsys, monkeypatch):
    _, results, _ = single
    monkeypatch.delenv("COLUMNS", raising=False)
    piped = _status(capsys, str(results))
    longest = max(len(line) for line in piped.splitlines())
    assert longest > 140 and "…" not in piped  # full parameters: nothing cut in a pipe
    for columns in (100, 160):
        monkeypatch.setenv("COLUMNS", str(columns))
        table = _status(capsys, str(results)).split("\n\n")[0].splitlines()[1:]
        assert max(len(line) for line in table) <= columns
        assert any(line.endswith("…") for line in table)
    monkeypatch.setenv("COLUMNS", "400")
    assert "…" not in _status(capsys, str(results))  # room for everything: nothing cut
