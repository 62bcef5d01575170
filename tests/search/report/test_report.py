"""``mergesearch report``: one offline HTML file with real plots, and PNGs; and study lookup."""

from __future__ import annotations

import re

import optuna
import pytest
from plotly.offline import get_plotlyjs

from mergesearch.search.cli import main
from tests.search.report.browser import needs_chromium, render

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def single_report(single, tmp_path_factory):
    study, results, _ = single
    assert main(["report", str(results)]) == 0
    return study, results


def test_report_is_one_offline_file_with_plotly_once(single_report, capsys):
    study, results = single_report
    page = (results / "report.html").read_text()
    library = get_plotlyjs()
    assert page.count(library) == 1, "plotly.js must be embedded exactly once"
    assert len(page) < len(library) + 1_000_000
    ours = page.replace(library, "")
    assert "cdn.plot.ly" not in ours and not re.search(r"<script[^>]+src=", ours)
    assert "https://" not in ours
    for key in ("history", "importances", "parallel", "profile"):
        assert f'id="plot-{key}"' in page, key
    assert 'id="plot-pareto"' not in page  # single objective
    n = len(study.trials)
    assert f'data-trials="{n}"' in page
    # every baseline is in the top table, next to the trials
    for name in ("base", "rev", "up", "average"):
        assert re.search(rf"<td>#\d+</td><td>{name}</td>", page), name


def test_report_pngs(single_report):
    _, results = single_report
    names = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert names == [
        "best_profile.png",
        "history.png",
        "importances.png",
        "parallel_coordinates.png",
    ]
    for name in names:
        data = (results / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name


def test_report_pareto_study(pareto, tmp_path, capsys):
    _, results, _ = pareto
    out = tmp_path / "elsewhere"
    assert main(["report", str(results), "--out", str(out), "--pick", "knee"]) == 0
    page = (out / "report.html").read_text()
    assert 'id="plot-pareto"' in page
    assert (out / "plots" / "pareto_front.png").read_bytes()[:8] == PNG_MAGIC
    assert "closest to the ideal point" in page
    assert not (results / "report.html").exists()


@needs_chromium
def test_report_renders_in_a_browser(single_report, tmp_path):
    study, results = single_report
    url = (results / "report.html").as_uri()
    shot = tmp_path / "report.png"
    dom = render(url, shot, size=(1400, 5200))
    n_search = sum(
        1 for t in study.trials if t.state.name == "COMPLETE" and "baseline" not in t.user_attrs
    )
    # each figure drew its SVG; the history shows one marker per trial at least
    drawn = re.findall(r'<div id="plot-(\w+)"[^>]*class="plotly-graph-div[^"]*"[^>]*>', dom)
    assert set(drawn) >= {"history", "importances", "parallel", "profile"}, drawn
    assert dom.count('class="main-svg"') >= 2 * len(drawn)
    assert dom.count('class="scatterlayer mlayer"') >= 2
    assert dom.count('class="point"') >= n_search
    assert "parcoords" in dom
    assert f"{len(study.trials)} trials (" in dom
    assert shot.stat().st_size > 50_000


def test_study_lookup_errors(single, tmp_path, capsys):
    _, results, _ = single
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such results folder" in capsys.readouterr().err
    assert main(["report", str(results), "--study", "other"]) == 2
    err = capsys.readouterr().err
    assert "no study named 'other'" in err and "fake" in err

    url = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=url)
    assert main(["report", url]) == 2
    err = capsys.readouterr().err
    assert "several studies (a, b)" in err
    # an empty study reports, without plots
    assert main(["report", url, "--study", "a", "--out", str(tmp_path / "a")]) == 0
    page = (tmp_path / "a" / "report.html").read_text()
    assert "Not drawn" in page and 'data-trials="0"' in page


def test_journal_results_folder(tmp_path, capsys):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = tmp_path / "results" / "j"
    folder.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    study = optuna.create_study(study_name="j", storage=storage)
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2, n_trials=6)
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    assert 'data-trials="6"' in page and 'id="plot-parallel"' in page
    assert "Not drawn: the trial has no merge config" in page  # a study made outside mergesearch
    assert f"report: {folder / 'report.html'}" in capsys.readouterr().out
    assert (folder / "plots" / "history.png").is_file()
