"""The search loop on tiny models, scored by the probe evaluator (tests/helpers/probe.py)."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from safetensors.torch import load_file

from mergesearch.search import run_search
from mergesearch.search.cli import main
from mergesearch.search.errors import SpecError
from mergesearch.search.optimize.samplers import HideBaselines
from tests.helpers import probe
from tests.helpers.specs import make_spec


def states(study):
    return {t.number: t.state for t in study.trials}


def test_stored_config_merged_to_disk_equals_the_candidate_evaluated_in_memory(family, tmp_path):
    probe.CAPTURE = True
    spec = make_spec(
        family, tmp_path, methods=["ties", "dare_ties", "linear"], seed=3, budget={"trials": 10}
    )
    result = run_search(spec, progress=False)
    evaluated = [
        t
        for t in result.study.trials
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]
    assert len(evaluated) == len(probe.SNAPSHOTS) == 10
    methods = {t.user_attrs.get("method") for t in evaluated}
    assert {"dare_ties", "ties"} <= methods
    for trial, snapshot in zip(evaluated, probe.SNAPSHOTS, strict=True):
        config = tmp_path / f"trial{trial.number}.yaml"
        config.write_text(trial.user_attrs["merge_config"])
        out = tmp_path / f"merged{trial.number}"
        assert main(["merge", str(config), str(out), "--no-progress"]) == 0
        on_disk = load_file(out / "model.safetensors")
        assert set(on_disk) == set(snapshot)
        for name, tensor in on_disk.items():
            assert tensor.equal(snapshot[name]), (trial.number, name)


@pytest.mark.parametrize("interrupt_on_call", [6, 1], ids=["search-trial", "baseline"])
def test_resume_after_interruption_keeps_finished_trials(family, tmp_path, interrupt_on_call):
    spec = make_spec(family, tmp_path, budget={"trials": 9})
    probe.INTERRUPT_ON_CALL = interrupt_on_call
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, progress=False)
    study = optuna.load_study(study_name="t", storage=spec["storage"])
    before = {
        t.number: (t.values, t.datetime_complete)
        for t in study.trials
        if t.state == TrialState.COMPLETE
    }
    interrupted = study.trials[interrupt_on_call]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"] == "interrupted"
    assert len(before) == interrupt_on_call

    probe.reset()
    result = run_search(spec, progress=False)
    trials = result.study.trials
    assert [t.number for t in trials] == list(range(10))  # numbering continues
    for number, (values, completed) in before.items():
        assert (trials[number].values, trials[number].datetime_complete) == (values, completed)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 9
    assert len(probe.CALLS) == 9 - len(before)  # nothing finished was evaluated again
    baselines = sorted(t.user_attrs["baseline"] for t in finished if "baseline" in t.user_attrs)
    assert baselines == ["a", "average", "b", "base"]

    probe.reset()
    again = run_search(spec, progress=False)  # budget spent: nothing runs
    assert again.ran == 0 and not probe.CALLS and len(again.study.trials) == 10


def test_a_failing_candidate_fails_only_its_trial(family, tmp_path):
    spec = make_spec(
        family,
        tmp_path,
        methods=["task_arithmetic"],
        # each value fits float32 (the spec refuses one that does not); the product of a large
        # weight and a large lambda overflows
        parameters={
            "weight": {"low": 1e20, "high": 1e30, "log": True},
            "lambda": {"low": 1e10, "high": 1e30, "log": True},
        },
        budget={"trials": 14},
    )
    probe.FAIL_ON_CALLS.add(2)  # the evaluator breaks on baseline b
    result = run_search(spec, progress=False)
    trials = result.study.trials
    assert len(trials) == 14
    assert trials[2].state == TrialState.FAIL
    assert (
        trials[2].user_attrs["fail_reason"] == "evaluation: RuntimeError: probe exploded on call 2"
    )
    reasons = [t.user_attrs.get("fail_reason", "") for t in trials[4:]]
    assert any("NonFiniteError" in r for r in reasons)
    assert any(t.state == TrialState.COMPLETE for t in trials[4:])
    assert all(
        (t.state == TrialState.FAIL) == bool(t.user_attrs.get("fail_reason")) for t in trials
    )
    assert result.summary.best


def test_identical_configs_are_answered_from_the_study(family, tmp_path):
    spec = make_spec(
        family,
        tmp_path,
        methods=["linear"],
        parameters={"weight": {"choices": [0.5, 1.0]}},
        budget={"trials": 14},
    )
    result = run_search(spec, progress=False)
    trials = result.study.trials
    hashes = {t.user_attrs["config_hash"] for t in trials}
    assert len(probe.CALLS) == len(hashes) < len(trials)
    for t in trials:
        if "duplicate_of" in t.user_attrs:
            original = trials[t.user_attrs["duplicate_of"]]
            assert t.values == original.values
            assert t.user_attrs["merge_config"] == original.user_attrs["merge_config"]


@pytest.mark.parametrize("pruner", ["median", "wilcoxon"])
def test_staged_evaluation_prunes(family, tmp_path, pruner):
    options = {"n_startup_trials": 1} if pruner == "median" else {"p_threshold": 0.5}
    spec = make_spec(
        family,
        tmp_path,
        budget={"trials": 14},
        pruner={"name": pruner, "stages": [4, None], "options": options},
    )
    result = run_search(spec, progress=False)
    pruned = [t for t in result.study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["stage"] == 4 for t in pruned)
    assert not any("baseline" in t.user_attrs for t in pruned)


def test_baselines_are_hidden_from_the_sampler():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"baseline": "a"}))
    dist = optuna.distributions.FloatDistribution(0, 1)
    for x in (0.1, 0.5, 0.9):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x, "y": x}, distributions={"x": dist, "y": dist}, value=x
            )
        )
    trial = study.ask()
    frozen = study.trials[-1]
    plain = optuna.samplers.TPESampler(seed=0)
    assert plain.infer_relative_search_space(study, frozen) == {}
    wrapped = HideBaselines(optuna.samplers.TPESampler(seed=0))
    assert set(wrapped.infer_relative_search_space(study, frozen)) == {"x", "y"}
    del trial


def test_resuming_with_another_space_is_refused(family, tmp_path, capsys):
    run_search(make_spec(family, tmp_path, budget={"trials": 5}), progress=True)
    assert "best" in capsys.readouterr().err  # the progress bar shows the best so far
    changed = make_spec(
        family,
        tmp_path,
        budget={"trials": 6},
        parameters={"weight": {"low": 0.2, "high": 1.0}, "density": 0.5, "lambda": 1.0},
    )
    with pytest.raises(SpecError, match="another search space"):
        run_search(changed, progress=False)


def test_cli_search_and_status(family, tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make_spec(family, tmp_path)))
    assert main(["search", str(path), "--n-trials", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best" in out and "average" in out and "6 trials" in out
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "study 't'" in out and "6 done" in out and "baseline average" in out


def test_cli_spec_error_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nsources: {models: {a: org/a}}\nmethods: [linear]\n")
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "objectives: is required" in err


def test_demo_spec_points_at_a_built_family(tmp_path):
    from types import SimpleNamespace

    from mergesearch.search.cli.demo import demo_spec
    from mergesearch.search.spec.load import load_spec

    family = SimpleNamespace(
        base=tmp_path / "base", specialists={"rev": tmp_path / "r", "up": tmp_path / "u"}
    )
    spec = load_spec(demo_spec(family, seed=2))
    assert spec.name == "demo-seed2"
    assert spec.sources.base == str(tmp_path / "base")
    assert list(spec.sources.models) == ["rev", "up"]
    assert [o.name for o in spec.objectives] == ["rev", "up"]


def test_passthrough_slices_change_the_depth_of_the_live_model(family, tmp_path):
    probe.CAPTURE = True
    slices = [
        {
            "source": {"choices": ["a", "b"]},
            "start": {"low": 0, "high": 1},
            "length": {"low": 1, "high": 2},
        },
        {"source": "base", "start": 0, "length": {"low": 1, "high": 2}},
    ]
    spec = make_spec(
        family,
        tmp_path,
        methods={"passthrough": {"slices": slices}},
        parameters={},
        baselines=False,
        budget={"trials": 8},
    )
    result = run_search(spec, progress=False)
    trials = [t for t in result.study.trials if "duplicate_of" not in t.user_attrs]
    assert all(t.state == TrialState.COMPLETE for t in result.study.trials)
    depths = []
    for trial, snapshot in zip(trials, probe.SNAPSHOTS, strict=True):
        config = yaml.safe_load(trial.user_attrs["merge_config"])
        depth = sum(
            s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0]
            for s in config["slices"]
        )
        assert all(r <= 2 for s in config["slices"] for r in s["sources"][0]["layer_range"])
        assert {k for k in snapshot if ".layers." in k and k.endswith("q_proj.weight")} == {
            f"model.layers.{i}.self_attn.q_proj.weight" for i in range(depth)
        }
        depths.append(depth)
    assert len(set(depths)) > 1


@pytest.mark.parametrize("sampler", ["tpe", "gp", "qmc", "random", "nsga2"])
def test_every_sampler_runs(family, tmp_path, sampler):
    spec = make_spec(
        family,
        tmp_path,
        storage="memory:",
        sampler={"name": sampler, "seed": 1},
        budget={"trials": 7},
    )
    result = run_search(spec, progress=False)
    assert sum(t.state == TrialState.COMPLETE for t in result.study.trials) == 7
    assert type(result.study.sampler.inner).__name__.lower().startswith(sampler[:2])


def test_cmaes_runs_when_installed(family, tmp_path):
    pytest.importorskip("cmaes")
    spec = make_spec(
        family,
        tmp_path,
        storage="memory:",
        methods=["ties"],
        sampler={"name": "auto"},
        budget={"trials": 14},
    )
    result = run_search(spec, progress=False)
    assert type(result.study.sampler.inner).__name__ == "CmaEsSampler"
    search_trials = [t for t in result.study.trials if "baseline" not in t.user_attrs]
    assert any("cma:generation" in t.system_attrs for t in search_trials)
