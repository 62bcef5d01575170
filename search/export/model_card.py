"""The model card (``README.md``) of an exported merge: Hub metadata, then what and how.

Front matter: ``base_model`` lists the sources that are Hub ids (local folders are not), with
``base_model_relation: merge``; ``tags: [merge, mergesearch]``; ``library_name: transformers``;
``license`` when the sources' own cards say (read from local folders or the local Hub cache,
never from the network): one licence when they agree, ``other`` plus a list when they differ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from mergesearch import merging
from mergesearch.search import attrs as A
from mergesearch.search.distributed.urls import hide_passwords
from mergesearch.search.optimize import trials as T

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FRONT_MATTER_RE = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def is_hub_id(ref: str) -> bool:
    return bool(HUB_ID_RE.match(ref)) and not Path(ref).exists()


def _front_matter(text: str) -> dict[str, Any]:
    match = FRONT_MATTER_RE.match(text)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def source_license(ref: str) -> str | None:
    """The ``license`` of a source's card, from its folder or the local Hub cache."""
    card: Path | None = Path(ref) / "README.md"
    if not card.is_file():
        card = None
        if is_hub_id(ref):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, "README.md")
            card = Path(cached) if isinstance(cached, str) else None
    if card is None:
        return None
    value = _front_matter(card.read_text(encoding="utf-8", errors="replace")).get("license")
    return str(value) if value else None


def front_matter(config: merging.MergeConfig) -> dict[str, Any]:
    refs = config.model_refs
    meta: dict[str, Any] = {}
    hub = [r for r in refs if is_hub_id(r)]
    if hub:
        meta["base_model"] = hub
        meta["base_model_relation"] = "merge"
    meta["tags"] = ["merge", "mergesearch"]
    meta["library_name"] = "transformers"
    licenses = {r: lic for r in refs if (lic := source_license(r))}
    if licenses:
        kinds = sorted(set(licenses.values()))
        meta["license"] = kinds[0] if len(kinds) == 1 else "other"
    return meta


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return "–"


def _scores_table(study: optuna.Study, trial: FrozenTrial, names: list[str]) -> list[str]:
    split = T.heldout_split(study)
    splits = ["search", *([split] if split else [])]
    head = ["", *[f"{n} ({s})" for s in splits for n in names]]
    rows = [(f"**this merge** (trial {trial.number})", trial)]
    rows += [(f"source: {T.baseline_name(b)}", b) for b in T.baselines(study)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, t in rows:
        s = T.scores(study, t)
        cells = [_num(s.get(sp, {}).get(n)) for sp in splits for n in names]
        out.append("| " + " | ".join([_cell(label), *cells]) + " |")
    return out


def _method_line(config: merging.MergeConfig) -> str:
    """What the method does, where it comes from, and the base it worked from."""
    method = merging.get_method(config.merge_method)
    line = f"`{method.name}`: {method.description or 'see the merge method documentation'}."
    if method.paper:
        line += f" Paper: <{method.paper}>."
    if config.base_model:
        line += f" Base model: `{config.base_model}`."
    return line


def render(
    study: optuna.Study,
    trial: FrozenTrial,
    why: str,
    config: merging.MergeConfig,
    config_text: str,
    title: str,
) -> str:
    meta = front_matter(config)
    infos = T.objectives(study)
    names = [o.name for o in infos]
    sources = {str(v): k for k, v in (study.user_attrs.get(A.SOURCES) or {}).items()}
    method = config.merge_method
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip("\n"),
        "---",
        "",
        f"# {title}",
        "",
        "A merge of pre-trained language models, found by an evolutionary search over merge "
        "recipes with mergesearch (Optuna proposes merge parameters, "
        "each candidate is merged in memory and scored).",
        "",
        "## Method",
        "",
        _method_line(config),
        "",
        "### Models merged",
        "",
    ]
    for ref in config.model_refs:
        role = " (base)" if ref == config.base_model else ""
        name = f" — source `{sources[ref]}`" if ref in sources else ""
        lines.append(f"- `{ref}`{role}{name}")
    licenses = {r: lic for r in config.model_refs if (lic := source_license(r))}
    if len(set(licenses.values())) > 1:
        lines += ["", "Licences of the sources differ:"]
        lines += [f"- `{r}`: {lic}" for r, lic in licenses.items()]
    lines += [
        "",
        "## Configuration",
        "",
        "The mergekit-compatible config (also `mergekit_config.yml`; rebuild with "
        "`mergesearch merge mergekit_config.yml OUT_DIR`):",
        "",
        "```yaml",
        config_text.rstrip("\n"),
        "```",
        "",
    ]
    if config.seed is not None and merging.METHODS[method].uses_randomness:
        lines += [
            f"`{method}` drops parameters at random: `seed: {config.seed}` makes "
            "`mergesearch merge` rebuild these exact tensors. mergekit ignores the key (its "
            f"`--random-seed {config.seed}` draws other masks), so its result differs slightly.",
            "",
        ]
    lines += [
        "## Scores",
        "",
        f"Objectives: {', '.join(f'{o.name} ({o.direction}, weight {o.weight:g})' for o in infos)}."
        " The search optimised the `search` split; other splits were held out.",
        "",
        *_scores_table(study, trial, names),
        "",
        "## How it was found",
        "",
    ]
    states = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    for t in study.get_trials(deepcopy=False):
        if t.state.name in states:
            states[t.state.name] += 1
    n_baselines = len(T.baselines(study))
    lines += [
        f"Optuna study `{study.study_name}`: {len(study.trials)} trials "
        f"({states['COMPLETE']} completed, {states['PRUNED']} pruned, {states['FAIL']} failed), "
        f"{n_baselines} of them baselines (each source alone, their average).",
        f"This is trial {trial.number}: {why}.",
    ]
    spec = hide_passwords(study.user_attrs.get(A.SPEC) or "")  # published by `upload`
    if spec:
        lines += [
            "",
            "<details><summary>Search spec</summary>",
            "",
            "```yaml",
            spec.rstrip("\n"),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"
