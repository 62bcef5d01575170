"""A study as ``mergesearch search`` leaves it, made without evaluating anything.

The merge configs are real (the search space of a real spec over a tiny Llama family, so export
can rebuild them), the scores are a smooth made-up function of the parameters (so importances
and a Pareto front have structure). Trials and user attributes follow ``search.study`` and
``search.objective``: baselines first (each source alone, the average), then search trials, one
failed, one pruned and one answered duplicate, and held-out scores of the baselines and the best.

    study, results_dir, sources = make_study(tmp_path, pareto=False)
    study, results_dir, sources = shared_study(tmp_path_factory, pareto=True)  # once a session
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from mergesearch import merging
from mergesearch.search import attrs as A
from mergesearch.search.optimize import attachments
from mergesearch.search.optimize.space import SearchSpace
from mergesearch.search.spec.load import load_spec
from tests.helpers.tiny_models import make_llama_family

OBJECTIVES = ("rev", "up")


def spec_dict(name: str, sources: dict[str, Path], pareto: bool) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 7,
        "sources": {
            "base": str(sources["base"]),
            "models": {"rev": str(sources["rev"]), "up": str(sources["up"])},
        },
        "methods": ["ties", "dare_ties", "linear"],
        "parameters": {
            "weight": {"low": 0.1, "high": 1.0, "layer_groups": 2},
            "density": {"low": 0.1, "high": 1.0},
            "lambda": {"low": 0.5, "high": 2.0},
        },
        "objectives": [
            {
                "name": o,
                "metric": "exact_match,strip",
                "weight": 0.5,
                "splits": {"search": f"demo_{o}_search", "heldout": f"demo_{o}_heldout"},
            }
            for o in OBJECTIVES
        ],
        "combine": "pareto" if pareto else "weighted_sum",
        "sampler": "random",
        "budget": {"trials": 16},
    }


def _config_yaml(data: dict[str, Any]) -> str:
    return merging.load_merge_config(data).to_yaml()


def _fake_scores(params: dict[str, Any]) -> dict[str, float]:
    """Each objective likes its own model's weight and a moderate density, a little noise-free
    trade-off between the two: a real Pareto front appears."""
    rev = params["weight.rev.g0"] + params["weight.rev.g1"] - 0.6 * params["weight.up.g0"]
    up = params["weight.up.g0"] + params["weight.up.g1"] - 0.6 * params["weight.rev.g1"]
    shape = 1.0 - abs(0.5 * (params["density.rev"] + params["density.up"]) - 0.5)
    bonus = {"ties": 0.05, "dare_ties": 0.03, "linear": 0.0}[params["method"]]
    return {
        "rev": round(min(1.0, max(0.0, 0.45 * rev * shape + bonus)), 4),
        "up": round(min(1.0, max(0.0, 0.45 * up * shape + bonus)), 4),
    }


def make_study(
    root: Path,
    *,
    pareto: bool = False,
    name: str = "fake",
    n_search: int = 12,
    models: dict[str, Path] | None = None,
    **family: Any,
) -> tuple[optuna.Study, Path, dict[str, Path]]:
    """A study in ``root/results/<name>/study.db``; the tiny sources in ``root/models``."""
    root = Path(root)
    if models is None:
        paths = make_llama_family(root / "models", n_models=3, seed=0, **family)
        models = dict(zip(("base", "rev", "up"), paths, strict=True))
    results = root / "results" / name
    results.mkdir(parents=True, exist_ok=True)
    spec = load_spec(spec_dict(name, models, pareto))
    space = SearchSpace(spec)
    directions = ["maximize", "maximize"] if pareto else ["maximize"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{results / 'study.db'}",
        directions=directions,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.set_user_attr(A.SPEC, spec.to_yaml())
    study.set_user_attr(A.SOURCES, {n: spec.sources.path(n) for n in spec.sources.names()})
    study.set_user_attr(A.SPACE, space.fingerprint())
    study.set_user_attr(A.METHOD_PARAMS, space.used)
    study.set_user_attr(
        A.OBJECTIVES,
        [
            {"name": o, "weight": 0.5, "direction": "maximize", "splits": ["heldout", "search"]}
            for o in OBJECTIVES
        ],
    )
    study.set_user_attr(A.COMBINE, spec.combine)
    # what the search leaves for optuna-dashboard (search.optimize.attachments)
    attachments.name_metrics(study, list(OBJECTIVES) if pareto else ["weighted score"])
    attachments.save_spec_note(study)

    def values(s: dict[str, float]) -> list[float]:
        return [s["rev"], s["up"]] if pareto else [0.5 * s["rev"] + 0.5 * s["up"]]

    baseline_scores = {
        "base": {"rev": 0.1, "up": 0.12},
        "rev": {"rev": 0.55, "up": 0.05},
        "up": {"rev": 0.04, "up": 0.6},
        "average": {"rev": 0.3, "up": 0.33},
    }
    for label, data in space.baselines().items():
        s = baseline_scores[label]
        text = _config_yaml(data)
        key, meta = attachments.artifact_meta(name, len(study.trials), text)
        study.add_trial(
            create_trial(
                values=values(s),
                user_attrs={
                    A.BASELINE: label,
                    A.MERGE_CONFIG: text,
                    A.METRICS: {o: {"search": s[o]} for o in OBJECTIVES},
                    A.MERGE_SECONDS: 0.01,
                    A.EVAL_SECONDS: 0.5,
                },
                system_attrs={key: meta},
            )
        )

    first_search = None
    for i in range(n_search):
        trial = study.ask(space.distributions)
        first_search = trial.number if first_search is None else first_search
        params = trial.params
        config = space.config(params)
        trial.set_user_attr(A.METHOD, space.method_of(params))
        trial.set_user_attr(A.MERGE_CONFIG, _config_yaml(config))
        attachments.attach_config(trial, trial.user_attrs[A.MERGE_CONFIG])
        if i == 3:
            trial.set_user_attr(A.FAIL_REASON, "merge: NonFiniteError: merged tensor is NaN")
            study.tell(trial, state=TrialState.FAIL)
            continue
        s = _fake_scores(params)
        trial.set_user_attr(A.METRICS, {o: {"search": s[o]} for o in OBJECTIVES})
        trial.set_user_attr(A.MERGE_SECONDS, 0.02 + 0.001 * i)
        trial.set_user_attr(A.EVAL_SECONDS, 0.8 + 0.01 * i)
        if i == 5 and not pareto:
            trial.set_user_attr(A.STAGE, 20)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        study.tell(trial, values(s))
    # an identical config answered from an earlier trial (as search.objective does)
    earlier = study.trials[first_search]
    dup = study.ask(space.distributions)
    dup.set_user_attr(A.DUPLICATE_OF, earlier.number)
    for key in (A.METHOD, A.MERGE_CONFIG, A.METRICS, A.MERGE_SECONDS, A.EVAL_SECONDS):
        dup.set_user_attr(key, earlier.user_attrs[key])
    attachments.attach_config(dup, dup.user_attrs[A.MERGE_CONFIG])
    study.tell(dup, list(earlier.values))

    from mergesearch.search.optimize.summary import best_trials

    heldout = {}
    wanted = [t for t in study.trials if A.BASELINE in t.user_attrs] + best_trials(study)
    for t in wanted:
        s = t.user_attrs[A.METRICS]
        entry = {o: round(s[o]["search"] * 0.9, 4) for o in OBJECTIVES}
        entry["score"] = 0.5 * entry["rev"] + 0.5 * entry["up"]
        heldout[str(t.number)] = {A.CONFIG_HASH: "x", "heldout": entry}
    study.set_user_attr(A.HELDOUT, heldout)
    return study, results, models


_SHARED: dict[bool, tuple[optuna.Study, Path, dict[str, Path]]] = {}


def shared_study(
    factory: pytest.TempPathFactory, *, pareto: bool = False
) -> tuple[optuna.Study, Path, dict[str, Path]]:
    """One study of each kind per test session, over one tiny family (building both takes
    seconds). Tests may add files and attributes but must not rely on others not doing so."""
    if pareto not in _SHARED:
        models = next(iter(_SHARED.values()))[2] if _SHARED else None
        root = factory.mktemp("pareto" if pareto else "single")
        _SHARED[pareto] = make_study(root, pareto=pareto, models=models)
    return _SHARED[pareto]
