"""The model card (``README.md``) of an exported trial: what ``merging.card`` writes for any
merge, plus what the search knows.

Metadata (``huggingface_hub``'s ``ModelCardData``): the sources that are Hub ids as
``base_model``, tags ``merge``, ``mergekit`` and ``mergesearch``, the licence, and the trial's
scores as ``eval_results``, which the Hub reads as ``model-index``. The body names the sampler
that really ran (the study records it), each source's role in the method's own words (SLERP's
base is its t=0 end), the baselines that really ran, the held-out gain over the best source with
its paired standard error, and the spec version the trial ran under.
"""

from __future__ import annotations

from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from mergesearch import merging
from mergesearch.merging import card
from mergesearch.search import attrs as A
from mergesearch.search.distributed.urls import hide_passwords
from mergesearch.search.optimize import trials as T
from mergesearch.search.optimize import versions
from mergesearch.search.optimize.registry import SAMPLERS
from mergesearch.search.optimize.summary import summarize
from mergesearch.search.spec.schema import Objective


def _num(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return "–"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _objectives_of(spec_text: str) -> dict[str, Objective]:
    """The objectives of a stored spec, parsed (tasks per split, metric); empty when the text
    is not a spec this version can read."""
    try:
        raw = yaml.safe_load(spec_text) or {}
        return {o.name: o for o in (Objective.model_validate(x) for x in raw.get("objectives", []))}
    except Exception:  # a stored spec is informative only: the card goes on without it
        return {}


def eval_results(study: optuna.Study, trial: FrozenTrial, spec_text: str) -> list[Any]:
    """The trial's scores as ``huggingface_hub.EvalResult``s, one per objective and split."""
    from huggingface_hub import EvalResult

    parsed = _objectives_of(spec_text)
    out = []
    for split, values in T.scores(study, trial).items():
        for info in T.objectives(study):
            value = values.get(info.name)
            if not isinstance(value, int | float):
                continue
            objective = parsed.get(info.name)
            task = None
            if objective is not None and split in objective.splits:
                task = objective.splits[split].task
            metric = objective.metric if objective is not None else info.name
            out.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=task or info.name,
                    dataset_name=info.name,
                    dataset_split=split,
                    metric_type=metric.partition(",")[0],
                    metric_name=f"{info.name} ({split}, {metric})",
                    metric_value=round(float(value), 4),
                )
            )
    return out


def sampler_phrase(study: optuna.Study) -> str:
    """The sampler that proposed the trials, in words (the study records its name)."""
    name = study.user_attrs.get(A.SAMPLER)
    entry = SAMPLERS.get(name or "")
    if entry is None or not entry.title:
        return "an Optuna sampler"
    return f"Optuna with {entry.title}"


def baselines_phrase(study: optuna.Study) -> str:
    """Which baselines ran, as they ran: the sources alone, and their average when there was
    one (a study of one model and a base has none)."""
    names = [T.baseline_name(t) or "?" for t in T.baselines(study)]
    alone = [n for n in names if n != "average"]
    parts = []
    if alone:
        parts.append(", ".join(f"`{n}`" for n in alone) + " alone")
    if "average" in names:
        parts.append("their uniform average")
    return "; ".join(parts) if parts else "none"


def _scores_table(study: optuna.Study, trial: FrozenTrial, names: list[str]) -> list[str]:
    split = T.heldout_split(study)
    splits = ["search", *([split] if split else [])]
    head = ["", *[f"{n} ({s})" for s in splits for n in names]]
    rows = [(f"**this merge** (trial {trial.number})", trial)]
    rows += [
        (
            "average of the sources"
            if T.baseline_name(b) == "average"
            else f"source: {T.baseline_name(b)}",
            b,
        )
        for b in T.baselines(study)
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, t in rows:
        s = T.scores(study, t)
        cells = [_num(s.get(sp, {}).get(n)) for sp in splits for n in names]
        out.append("| " + " | ".join([_cell(label), *cells]) + " |")
    return out


def _gain_lines(study: optuna.Study, trial: FrozenTrial) -> list[str]:
    summary = summarize(study)
    row = next((r for r in summary.rows if r.number == trial.number), None)
    lines = summary.gain_lines(row=row) if row is not None else []
    if not lines:
        return []
    return [
        "Held out (items the search never scored), with the paired standard error of each "
        "difference; a gain under two standard errors is marked not significant:",
        "",
        *[f"- {line[0].upper()}{line[1:]}" for line in lines],
        "",
    ]


def render(
    study: optuna.Study,
    trial: FrozenTrial,
    why: str,
    config: merging.MergeConfig,
    config_text: str,
    title: str,
) -> str:
    infos = T.objectives(study)
    names = [o.name for o in infos]
    sources = {str(v): k for k, v in (study.user_attrs.get(A.SOURCES) or {}).items()}
    version = versions.spec_of(study, trial)
    spec = hide_passwords(version.spec)  # published by `upload`; a study made before the rule
    data = card.card_data(config, model_name=title, eval_results=eval_results(study, trial, spec))
    body = [
        f"# {title}",
        "",
        "A merge of pre-trained language models, found by a search over merge recipes with "
        f"mergesearch: {sampler_phrase(study)} proposed merge parameters, each candidate was "
        "merged in memory and scored, and the sources were scored alongside as baselines.",
        "",
        "## Method",
        "",
        card.method_line(config),
        "",
        "### Models merged",
        "",
        *card.models_lines(config, sources),
        "",
        *card.config_lines(config, config_text),
        "## Scores",
        "",
        f"Objectives: {', '.join(f'{o.name} ({o.direction}, weight {o.weight:g})' for o in infos)}."
        " The search optimised the `search` split; other splits were held out.",
        "",
        *_scores_table(study, trial, names),
        "",
        *_gain_lines(study, trial),
        "## How it was found",
        "",
    ]
    states = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    for t in study.get_trials(deepcopy=False):
        if t.state.name in states:
            states[t.state.name] += 1
    n_baselines = len(T.baselines(study))
    body += [
        f"Optuna study `{study.study_name}`: {len(study.trials)} trials "
        f"({states['COMPLETE']} completed, {states['PRUNED']} pruned, {states['FAIL']} failed); "
        f"{n_baselines} baselines ({baselines_phrase(study)}).",
        f"This is trial {trial.number}: {why}.",
    ]
    if spec:
        several = len(versions.versions(study)) > 1
        head = f"Search spec (version {version.number})" if several else "Search spec"
        body += [
            "",
            f"<details><summary>{head}</summary>",
            "",
            "```yaml",
            spec.rstrip("\n"),
            "```",
            "",
            "</details>",
        ]
    return card.render(data, body)
