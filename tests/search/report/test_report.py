"""``mergesearch report``: one offline HTML file with real plots, and PNGs; and study lookup."""

from __future__ import annotations

import re

import optuna
import pytest
import yaml
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
    for key in ("history", "importances", "parallel", "objectives", "profile"):
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
        "objectives.png",
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
    assert set(drawn) >= {"history", "importances", "parallel", "objectives", "profile"}, drawn
    assert dom.count('class="main-svg"') >= 2 * len(drawn)
    assert dom.count('class="scatterlayer mlayer"') >= 2
    assert dom.count('class="point"') >= n_search
    assert "parcoords" in dom
    assert f"{len(study.trials)} trials (" in dom
    # the sources are named in the legends, not by labels drawn over the plot
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', dom)
    assert {"source: rev", "source: up", "average of sources"} <= set(legend), legend
    drawn_texts = re.findall(r"<text([^>]*)>source: rev</text>", dom)
    assert drawn_texts and all('class="legendtext"' in attrs for attrs in drawn_texts)
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


# ------------------------------------------------------------------------------ what it shows


def _cells(page: str, number: int) -> list[str]:
    row = re.search(rf"<tr class=\"trial\"><td>\d+</td><td>#{number}</td>(.*?)</tr>", page)
    assert row, number
    return re.findall(r"<td>(.*?)</td>", row[1])


def test_top_table_rows_show_only_the_parameters_their_method_reads(single_report):
    study, results = single_report
    page = (results / "report.html").read_text()
    used = study.user_attrs["method_params"]
    shown = 0
    for trial in study.trials:
        if f"<td>#{trial.number}</td>" not in page or "baseline" in trial.user_attrs:
            continue
        method, params = _cells(page, trial.number)[:2]
        names = {part.split("=")[0] for part in params.split()}
        assert names == set(used[method]), (trial.number, method, names)
        shown += 1
    assert shown >= 3


def test_importances_per_method_and_the_methods_table(single_report):
    study, results = single_report
    page = (results / "report.html").read_text()
    methods = re.search(r'<table id="methods">(.*?)</table>', page)[1]
    listed = re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td>", methods)
    searched = {t.user_attrs.get("method") for t in study.trials if t.state.name == "COMPLETE"}
    assert {m for m, _ in listed} == searched - {None}
    from mergesearch.search.optimize.trials import pick_trial
    from mergesearch.search.report import plots

    data = plots.prepare(study, pick_trial(study)[0])
    table, _ = plots.importances(data)
    used = study.user_attrs["method_params"]
    assert table
    for method, targets in table.items():
        for values in targets.values():
            assert set(values) <= set(used[method]), method  # never a parameter it ignores
    if "linear" in table:
        assert not any("lambda" in v or "density" in str(v) for v in table["linear"].values())


def test_config_diff_against_the_average(single_report):
    _, results = single_report
    page = (results / "report.html").read_text()
    diff = re.search(r'<pre id="config-diff">(.*?)</pre>', page, re.DOTALL)[1]
    assert '<span class="del">-merge_method: linear</span>' in diff
    assert re.search(r'<span class="add">\+merge_method: \w+</span>', diff)
    assert "average of the sources (trial 3)" in diff


def test_layer_profile_draws_one_line_per_filter(single, tmp_path):
    from optuna.trial import create_trial

    from mergesearch.search import attrs as A
    from mergesearch.search.report import plots

    _, _, models = single
    config = {
        "merge_method": "linear",
        "models": [
            {
                "model": str(models["rev"]),
                "parameters": {
                    "weight": [
                        {"filter": "self_attn", "value": [0.1, 0.9]},
                        {"filter": "mlp", "value": 0.5},
                        {"value": 0.3},
                    ]
                },
            },
            {"model": str(models["up"]), "parameters": {"weight": 1.0}},
        ],
        "dtype": "float32",
    }
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=1.0, user_attrs={A.MERGE_CONFIG: yaml.safe_dump(config)}))
    trial = study.trials[0]
    profile = plots.layer_profile(plots.prepare(study, trial))
    lines = profile.panels["weight"]
    assert {"model_1 self_attn", "model_1 mlp", "model_1 rest"} <= set(lines), set(lines)
    attn = [v for _, v in lines["model_1 self_attn"]]
    assert attn[0] == pytest.approx(0.1) and attn[-1] == pytest.approx(0.9)
    assert {v for _, v in lines["model_1 mlp"]} == {0.5}
    assert {v for _, v in lines["model_1 rest"]} == {0.3}


def test_parallel_png_has_axis_ticks_and_a_colour_bar(single, monkeypatch, tmp_path):
    from mergesearch.search.optimize.trials import pick_trial
    from mergesearch.search.report import plots, plots_png

    study, _, _ = single
    drawn = []
    make = plots_png._figure

    def keep(*args, **kwargs):
        drawn.append(make(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(plots_png, "_figure", keep)
    data = plots.prepare(study, pick_trial(study)[0])
    plots_png.png_parallel(data, tmp_path / "p.png")
    (fig,) = drawn
    main_ax, bar = fig.axes
    assert bar.get_ylabel() == "weighted score"  # the colour bar names the colour's scale
    labels = [t.get_text() for t in main_ax.texts]
    assert {"linear", "ties", "dare_ties"} <= set(labels)  # the method axis: its choices
    assert "0.1" in labels and "1" in labels  # a numeric axis: low and high


def test_gains_with_standard_errors_and_spec_versions(family, tmp_path):
    """A real search with a held-out split, resumed under a changed weight: the report gives
    the chosen trial's held-out gains with their paired standard errors, and each spec version
    with the trials it covers."""
    import copy

    from mergesearch.search import run_search
    from tests.helpers.specs import make_spec

    spec = make_spec(family, tmp_path, budget={"trials": 6})
    spec["objectives"][0]["splits"] = {"search": {"limit": 8}, "heldout": {}}
    run_search(spec, progress=False)
    changed = copy.deepcopy(spec)
    changed["objectives"][0]["weight"] = 3.0
    changed["budget"] = {"trials": 14}
    run_search(changed, progress=False, allow_spec_change=True)
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    gains = re.search(r'<ul id="gains">(.*?)</ul>', page)[1]
    assert "held-out gain over the best source" in gains and " ± " in gains and "1 s.e." in gains
    assert "Search spec, version 1 (trials 0–5)" in page
    assert "Search spec, version 2 (trials 6–13, the chosen trial&#x27;s)" in page
    assert "weight: 3.0" in page and "--allow-spec-change" in page
