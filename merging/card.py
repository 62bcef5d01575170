"""The model card (``README.md``) of a merged model: Hub metadata first, then what was merged.

``mergesearch merge`` writes ``merge_card`` into every output folder, next to
``mergekit_config.yml``, as ``mergekit-yaml`` does; ``mergesearch export`` builds its fuller
card for a searched trial from the same pieces. The metadata is written by
``huggingface_hub``'s card classes, so the Hub reads it as it reads its own: ``base_model`` lists
the sources that are Hub ids (local folders are not) with ``base_model_relation: merge``; the
tags carry ``merge`` and ``mergekit`` (the Hub's filters for merges use them); ``license`` comes
from the sources' own cards, read from local folders or the local Hub cache, never the network.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mergesearch.merging.config import MergeConfig
from mergesearch.merging.methods import METHODS, get_method

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FRONT_MATTER_RE = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
TAGS = ["merge", "mergekit", "mergesearch"]


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


def card_data(
    config: MergeConfig, *, model_name: str | None = None, eval_results: list | None = None
) -> Any:
    """``huggingface_hub.ModelCardData`` of a merge (``eval_results`` become ``model-index``,
    which needs ``model_name``)."""
    from huggingface_hub import ModelCardData

    refs = config.model_refs
    hub = [r for r in refs if is_hub_id(r)]
    licenses = sorted({lic for r in refs if (lic := source_license(r))})
    extra = {"base_model_relation": "merge"} if hub else {}
    return ModelCardData(
        base_model=hub or None,
        library_name="transformers",
        license=(licenses[0] if len(licenses) == 1 else "other") if licenses else None,
        tags=list(TAGS),
        model_name=model_name,
        eval_results=eval_results or None,
        **extra,
    )


def render(data: Any, body: list[str]) -> str:
    """The card's text: ``data``'s YAML front matter, then ``body``'s lines (Markdown)."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body).rstrip("\n") + "\n")
    return str(card)


def method_line(config: MergeConfig) -> str:
    """What the method does and where it comes from (its paper, when it has one)."""
    method = get_method(config.merge_method)
    line = f"`{method.name}`: {method.description or 'see the merge method documentation'}."
    if method.paper:
        line += f" Paper: <{method.paper}>."
    return line


def role(config: MergeConfig, ref: str) -> str:
    """What ``ref`` is to the merge, in the method's own words: `` (base)``, or for an
    interpolation `` (t=0 end)``; empty for the other inputs."""
    if ref != config.base_model:
        return ""
    return f" ({METHODS[config.merge_method].base_name})"


def models_lines(config: MergeConfig, names: dict[str, str] | None = None) -> list[str]:
    """One Markdown list line per model merged, with its role and (``names``) its source name."""
    names = names or {}
    lines = []
    for ref in config.model_refs:
        name = f" — source `{names[ref]}`" if ref in names else ""
        lines.append(f"- `{ref}`{role(config, ref)}{name}")
    licenses = {r: lic for r in config.model_refs if (lic := source_license(r))}
    if len(set(licenses.values())) > 1:
        lines += ["", "Licences of the sources differ:"]
        lines += [f"- `{r}`: {lic}" for r, lic in licenses.items()]
    return lines


def seed_note(config: MergeConfig, seed: int | None = None) -> list[str]:
    """Why the YAML's ``seed`` matters for a method that drops parameters at random."""
    seed = config.seed if seed is None else seed
    if seed is None or not METHODS[config.merge_method].uses_randomness:
        return []
    return [
        f"`{config.merge_method}` drops parameters at random: `seed: {seed}` makes "
        "`mergesearch merge` rebuild these exact tensors. mergekit ignores the key (its "
        f"`--random-seed {seed}` draws other masks), so its result differs slightly.",
        "",
    ]


def config_lines(config: MergeConfig, config_text: str, seed: int | None = None) -> list[str]:
    """The card's configuration section: the YAML to rebuild the merge, and its seed."""
    return [
        "## Configuration",
        "",
        "The mergekit-compatible config (also `mergekit_config.yml`; rebuild with "
        "`mergesearch merge mergekit_config.yml OUT_DIR`):",
        "",
        "```yaml",
        config_text.rstrip("\n"),
        "```",
        "",
        *seed_note(config, seed),
    ]


def merge_card(config: MergeConfig, title: str, *, seed: int | None = None) -> str:
    """The short card ``mergesearch merge`` writes: metadata, method, models, config."""
    config_text = config.to_yaml()
    body = [
        f"# {title}",
        "",
        "A merge of pre-trained language models made with mergesearch's merge engine "
        "(mergekit-compatible: the config below also runs with `mergekit-yaml`).",
        "",
        "## Method",
        "",
        method_line(config),
        "",
        "## Models merged",
        "",
        *models_lines(config),
        "",
        *config_lines(config, config_text, seed),
    ]
    return render(card_data(config), body)
