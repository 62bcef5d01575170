"""The demo model family: a tiny Llama base and two specialists, built offline in minutes.

The recipe (see ``DemoRecipe``) is the one ``shared/DEMO_NOTES.md`` found to make merging
matter: the base is pretrained on seven string tasks, with the two target tasks (``rev``,
``up``) rare in the mix, so it knows them only a little; each specialist is then fine-tuned
briefly on one target task while replaying the five non-target tasks, never the other target.
The specialists' task vectors then combine: a well-chosen merge beats both specialists.

Everything is deterministic for a given seed (tokenizer, data order, initialisation), and a
family is cached: ``manifest.json``, written last, records the recipe hash and the table, and a
second call with the same recipe and seed returns it without training.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from search import demo_tasks

RECIPE_VERSION = 1
DEMO_DIR_ENV = "MERGESEARCH_DEMO_DIR"
MANIFEST = "manifest.json"
BASE_DIR = "base"
SPECIALISTS = demo_tasks.EVAL_TASKS
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the weights of a family (with the seed and the task data)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 344
    vocab_size: int = 264
    batch_size: int = 64
    warmup_steps: int = 30
    base_steps: int = 300
    base_lr: float = 2e-3
    base_target_weight: float = 0.1  # weight of rev and up in the base mixture (others: 1.0)
    specialist_steps: int = 200
    specialist_lr: float = 1e-3
    replay_fraction: float = 0.5  # of each specialist batch, drawn from the non-target tasks

    def digest(self, seed: int) -> str:
        blob = json.dumps(
            {"recipe": asdict(self), "seed": seed, "version": RECIPE_VERSION,
             "data_seed": demo_tasks.DATA_SEED},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class DemoFamily:
    """Where a built family lies, and the scores its build measured."""

    root: Path
    seed: int
    base: Path
    specialists: dict[str, Path]  # target task -> model folder
    table: list[dict[str, Any]] = field(default_factory=list)  # rows of search.demo_table
    build_seconds: float = 0.0
    cached: bool = False


def default_demo_dir() -> Path:
    """``$MERGESEARCH_DEMO_DIR`` if set, else ``results/demo-models`` under the current directory."""
    env = os.environ.get(DEMO_DIR_ENV)
    return Path(env) if env else Path.cwd() / "results" / "demo-models"


# --------------------------------------------------------------------------- tokenizer, model


def build_tokenizer(vocab_size: int = DemoRecipe.vocab_size) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer that keeps every letter and digit a token of its own.

    Isolating letters makes the string tasks character-level (a merged ``ab`` token would hide
    the letters a reversal needs); byte-level means any text encodes. Trained on prompts of all
    demo tasks, so only punctuation and spaces earn merges.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("[A-Za-z0-9]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(demo_tasks.DATA_SEED)
    words = demo_tasks.training_words(rng)
    corpus = []
    for _ in range(2000):
        name, word = rng.choice(sorted(demo_tasks.TASKS)), next(words)
        corpus.append(f"{demo_tasks.prompt(name, word)} {demo_tasks.TASKS[name].answer(word)}")
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def build_model(tokenizer: Any, recipe: DemoRecipe = DemoRecipe(), seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


# --------------------------------------------------------------------------- training


def _batches(
    tokenizer: Any, weights: dict[str, float], batch_size: int, rng: random.Random
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, labels) batches drawn from a task mixture.

    Prompt and answer are tokenized apart, exactly as lm-eval encodes the context and the model
    then generates the answer; the loss covers the answer and EOS only. Right padding needs no
    attention mask in a causal model: pads come after every token that is scored.
    """
    names = sorted(weights)
    probs = [weights[n] for n in names]
    words = demo_tasks.training_words(rng)
    while True:
        tasks = rng.choices(names, probs, k=batch_size)
        batch = [(t, next(words)) for t in tasks]
        prompts = tokenizer([demo_tasks.prompt(t, w) for t, w in batch], add_special_tokens=False)
        answers = tokenizer(
            [" " + demo_tasks.TASKS[t].answer(w) for t, w in batch], add_special_tokens=False
        )
        rows = []
        for p, a in zip(prompts["input_ids"], answers["input_ids"], strict=True):
            rows.append((p + a + [tokenizer.eos_token_id], len(p)))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        for i, (ids, n_prompt) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, n_prompt : len(ids)] = input_ids[i, n_prompt : len(ids)]
        yield input_ids, labels


def train(
    model: LlamaForCausalLM,
    tokenizer: Any,
    weights: dict[str, float],
    *,
    steps: int,
    lr: float,
    recipe: DemoRecipe,
    rng: random.Random,
) -> LlamaForCausalLM:
    """AdamW with a linear warm-up and a linear decay to zero."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = min(recipe.warmup_steps, steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = _batches(tokenizer, weights, recipe.batch_size, rng)
    for _ in range(steps):
        input_ids, labels = next(batches)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model


def base_mixture(recipe: DemoRecipe) -> dict[str, float]:
    return {
        name: recipe.base_target_weight if name in SPECIALISTS else 1.0
        for name in demo_tasks.TASKS
    }


def specialist_mixture(target: str, recipe: DemoRecipe) -> dict[str, float]:
    replay = [name for name in demo_tasks.TASKS if name not in SPECIALISTS]
    mix = {name: recipe.replay_fraction / len(replay) for name in replay}
    mix[target] = 1.0 - recipe.replay_fraction
    return mix


# --------------------------------------------------------------------------- family


def build_demo_family(
    out_dir: Path | None = None,
    *,
    seed: int = 0,
    threads: int = 1,
    force: bool = False,
    recipe: DemoRecipe | None = None,
    evaluate: bool = True,
) -> DemoFamily:
    """Build (or reuse) the family of one seed under ``out_dir/seed<k>/``.

    ``out_dir`` defaults to ``default_demo_dir()``. The family is trained into a temporary
    sibling folder and renamed into place once complete, manifest included, so a crash never
    leaves a folder that looks built. ``evaluate`` scores the table of ``search.demo_table``
    (base, specialists, 50/50 average, hand-picked merge on the held-out split).
    """
    recipe = recipe or DemoRecipe()
    root = (out_dir or default_demo_dir()) / f"seed{seed}"
    if not force and (family := load_demo_family(root, recipe, seed)) is not None:
        if family.table or not evaluate:
            return family

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = build_tokenizer(recipe.vocab_size)
        base = build_model(tokenizer, recipe, seed)
        train(base, tokenizer, base_mixture(recipe), steps=recipe.base_steps,
              lr=recipe.base_lr, recipe=recipe, rng=random.Random(seed))
        _save(base, tokenizer, tmp / BASE_DIR)
        for k, target in enumerate(SPECIALISTS, start=1):
            model = LlamaForCausalLM.from_pretrained(tmp / BASE_DIR)
            train(model, tokenizer, specialist_mixture(target, recipe),
                  steps=recipe.specialist_steps, lr=recipe.specialist_lr, recipe=recipe,
                  rng=random.Random(seed * 1000 + k))
            _save(model, tokenizer, tmp / _specialist_dir(target))
        table = []
        if evaluate:
            from search.demo_table import family_table

            table = family_table(tmp, threads=threads)
        seconds = time.perf_counter() - started
        manifest = {
            "recipe": asdict(recipe),
            "digest": recipe.digest(seed),
            "seed": seed,
            "base": BASE_DIR,
            "specialists": {t: _specialist_dir(t) for t in SPECIALISTS},
            "table": table,
            "build_seconds": round(seconds, 1),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            # another process finished the same family first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        torch.set_num_threads(previous_threads)
        shutil.rmtree(tmp, ignore_errors=True)
    family = load_demo_family(root, recipe, seed)
    if family is None:
        raise RuntimeError(f"demo family at {root} vanished after it was built")
    family.cached = False
    return family


def load_demo_family(
    root: Path, recipe: DemoRecipe | None = None, seed: int | None = None
) -> DemoFamily | None:
    """The family in ``root`` if its manifest exists (and matches recipe and seed when given)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if recipe is not None and seed is not None and manifest.get("digest") != recipe.digest(seed):
        return None
    return DemoFamily(
        root=root,
        seed=manifest["seed"],
        base=root / manifest["base"],
        specialists={t: root / d for t, d in manifest["specialists"].items()},
        table=manifest.get("table", []),
        build_seconds=manifest.get("build_seconds", 0.0),
        cached=True,
    )


def _specialist_dir(task: str) -> str:
    return f"spec-{task}"


def _save(model: LlamaForCausalLM, tokenizer: Any, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
