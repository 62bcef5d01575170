"""The demo model family: a tiny Llama base and two specialists, built offline in minutes.

The recipe (``DemoRecipe``): the base is pretrained on seven string tasks with the target
tasks (``rev``, ``up``) rare in the mix, long enough to copy letters reliably, then trained on
until a probe shows it knows each target a little (its floor); each specialist is fine-tuned
gently from it on one target while replaying the non-target tasks, never the other target, and
stops once it has learnt its task. Task vectors built on skills the base shares, and kept
small, add up: a well-chosen merge then beats both specialists, the naive average does not.
``docs/DEMO.md`` explains each of these conditions; ``bench/RESULTS_demo.md`` has the scores
and the recipes tried on the way.

Everything is deterministic for a given seed, thread count and CPU (tokenizer, data order,
initialisation; another CPU's matrix kernels sum in another order and train another family),
and a family is cached: ``manifest.json``, written last, records the recipe hash and the table,
and a second call with the same recipe and seed returns it without training.

The targets are a field of the recipe (``targets``, the demo's ``rev`` and ``up`` by default):
any 2 or 3 of the seven tasks, each with its own floor, so the same recipe builds families for
other task sets (the search-efficacy suite merges several). A family of other targets lies in
its own folder (``layout.family_dirname``) with its targets' lm-eval files inside (``tasks/``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergesearch.merging.atomic import atomic_write_text, cleanup_stale_temps, temp_sibling
from mergesearch.merging.errors import ConfigError
from mergesearch.merging.outputs import check_output
from mergesearch.search.demo import tasks as demo_tasks
from mergesearch.search.demo.layout import (
    BASE_DIR,
    MANIFEST,
    TASKS_SUBDIR,
    family_dirname,
    specialist_dir,
)
from mergesearch.search.demo.table import TABLE_KEY, family_table

RECIPE_VERSION = 7
DEMO_DIR_ENV = "MERGESEARCH_DEMO_DIR"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the weights of a family (with the seed and the task data)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 344
    vocab_size: int = 259  # 256 bytes + 3 specials: no merges (see build_tokenizer)
    batch_size: int = 64
    warmup_steps: int = 30
    base_steps: int = 600
    base_lr: float = 2e-3
    base_target_weight: float = 0.1  # weight of each target in the base mixture (others: 1.0)
    # then trained on until it knows each target this much (probe exact match); `up` higher:
    # merges keep it only when the base knows it
    base_floors: tuple[tuple[str, float], ...] = (("rev", 0.2), ("up", 0.3))
    base_boost_weight: float = 0.3
    base_extra_lr: float = 5e-4
    base_extra_max_steps: int = 600
    specialist_lr: float = 5e-4
    specialist_max_steps: int = 400
    specialist_target: float = 0.95  # a specialist stops once its probe exact match reaches this
    check_every: int = 25
    probe_words: int = 64  # training-distribution words, never an evaluation word
    replay_fraction: float = 0.5  # of each specialist batch, drawn from the non-target tasks
    # what the specialists learn (2 or 3 of demo_tasks.TASKS); a target that base_floors does
    # not list gets other_floor
    targets: tuple[str, ...] = demo_tasks.EVAL_TASKS
    other_floor: float = 0.2
    # specialists also replay the other targets: they then barely forget them, and their task
    # vectors share more (a family whose plain average merges best)
    replay_targets: bool = False

    def __post_init__(self) -> None:
        targets = demo_tasks.check_tasks(self.targets)
        if not 2 <= len(set(targets)) == len(targets) <= 3:
            raise ValueError(f"targets: give 2 or 3 distinct demo tasks, got {list(targets)}")
        object.__setattr__(self, "targets", targets)

    def floor(self, target: str) -> float:
        """Probe exact match the base must reach on ``target`` before specialists train."""
        return dict(self.base_floors).get(target, self.other_floor)

    def digest(self, seed: int) -> str:
        """Hash of everything that decides the weights. Fields added after recipe 7 enter it
        only when they differ from their defaults: the families built before they existed
        (the demo's targets) keep their digest, so their caches stay valid."""
        recipe = asdict(self)
        for name, default in LATER_FIELDS.items():
            if recipe[name] == default:
                del recipe[name]
        blob = json.dumps(
            {
                "recipe": recipe,
                "seed": seed,
                "version": RECIPE_VERSION,
                "data_seed": demo_tasks.DATA_SEED,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


LATER_FIELDS: dict[str, Any] = {
    "targets": demo_tasks.EVAL_TASKS,
    "other_floor": 0.2,
    "replay_targets": False,
}


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
    """A byte-level BPE tokenizer, trained on demo prompts, where every character is a token.

    Isolating letters and digits makes the string tasks character-level (a merged ``ab`` token
    would hide the letters a reversal needs); byte-level means any text encodes. The default
    vocabulary (256 bytes + 3 specials) leaves room for no merge: the only one the corpus
    offers is ``": "``, and it spans the prompt/answer boundary, so lm-eval's encoding of
    context + continuation as one string would differ from encoding them apart.
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


def build_model(
    tokenizer: Any, recipe: DemoRecipe = DemoRecipe(), seed: int = 0
) -> LlamaForCausalLM:
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


# --------------------------------------------------------------------------- progress


class BuildProgress:
    """One bar over a family's training: phase, steps, ETA.

    A phase that trains until a probe holds may stop early; its steps never taken then leave
    the total, so the bar's ETA is the most the rest can take and falls as phases end early.
    """

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        import sys

        from tqdm.auto import tqdm

        # explicit `disable`: the demo silences third-party bars through TQDM_DISABLE
        self.bar = tqdm(
            total=total,
            unit="step",
            desc="building",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.left = 0

    @classmethod
    def for_recipe(cls, recipe: DemoRecipe, *, enabled: bool = True) -> BuildProgress:
        most = (
            recipe.base_steps
            + recipe.base_extra_max_steps
            + len(recipe.targets) * recipe.specialist_max_steps
        )
        return cls(most, enabled=enabled)

    def start(self, phase: str, steps: int) -> None:
        self.bar.set_description(phase)
        self.left = steps

    def step(self) -> None:
        self.left -= 1
        self.bar.update(1)

    def end(self) -> None:
        """Close the phase; steps it did not take leave the total."""
        self.skip(self.left)
        self.left = 0

    def skip(self, steps: int) -> None:
        """A phase that does not run at all (or stopped early) removes its steps."""
        if steps and self.bar.total is not None:
            self.bar.total = max(self.bar.n, self.bar.total - steps)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- training


def _batches(
    tokenizer: Any,
    weights: dict[str, float],
    batch_size: int,
    rng: random.Random,
    targets: tuple[str, ...] = demo_tasks.EVAL_TASKS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, labels) batches drawn from a task mixture.

    Prompt and answer are tokenized apart, exactly as lm-eval encodes the context and the model
    then generates the answer; the loss covers the answer and EOS only. Right padding needs no
    attention mask in a causal model: pads come after every token that is scored.
    """
    names = sorted(weights)
    words = demo_tasks.training_words(rng, targets)
    while True:
        tasks = rng.choices(names, [weights[n] for n in names], k=batch_size)
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
    until: Callable[[LlamaForCausalLM], bool] | None = None,
    progress: BuildProgress | None = None,
    phase: str = "training",
) -> LlamaForCausalLM:
    """AdamW with a linear warm-up, then a linear decay to zero over ``steps``.

    With ``until``, the rate stays constant after the warm-up and training stops at the first
    check (every ``recipe.check_every`` steps) where ``until(model)`` holds, ``steps`` at most.
    ``progress`` counts the steps under ``phase``.
    """
    progress = progress or BuildProgress(0, enabled=False)
    progress.start(phase, steps)
    # eager attention: faster than sdpa at this size on CPU; not saved in the config
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = min(recipe.warmup_steps, steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 if until else max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = _batches(tokenizer, weights, recipe.batch_size, rng, recipe.targets)
    for step in range(1, steps + 1):
        input_ids, labels = next(batches)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step()
        if until and step >= warmup and step % recipe.check_every == 0:
            model.eval()
            done = until(model)
            model.train()
            if done:
                break
    progress.end()
    model.eval()
    model.set_attn_implementation(attention)
    return model


@torch.no_grad()
def probe_exact_match(
    model: LlamaForCausalLM, tokenizer: Any, task: str, words: list[str]
) -> float:
    """Greedy exact match on ``words``, batched by word length (equal prompts need no padding)."""
    correct = 0
    by_length: dict[int, list[str]] = {}
    for w in words:
        by_length.setdefault(len(w), []).append(w)
    for group in by_length.values():
        prompts = tokenizer([demo_tasks.prompt(task, w) for w in group], add_special_tokens=False)
        ids = torch.tensor(prompts["input_ids"])
        out = ids
        for _ in range(max(len(demo_tasks.TASKS[task].answer(w)) for w in group) + 2):
            out = torch.cat([out, model(out).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        for w, row in zip(group, out[:, ids.shape[1] :].tolist(), strict=True):
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            correct += tokenizer.decode(row).strip() == demo_tasks.TASKS[task].answer(w)
    return correct / len(words)


def base_mixture(recipe: DemoRecipe) -> dict[str, float]:
    return {
        name: recipe.base_target_weight if name in recipe.targets else 1.0
        for name in demo_tasks.TASKS
    }


def specialist_mixture(target: str, recipe: DemoRecipe) -> dict[str, float]:
    replay = [
        name
        for name in demo_tasks.TASKS
        if name != target and (recipe.replay_targets or name not in recipe.targets)
    ]
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
    progress: bool = False,
) -> DemoFamily:
    """Build (or reuse) the family of one seed under ``out_dir/seed<k>/``.

    ``out_dir`` defaults to ``default_demo_dir()``. The family is trained into a temporary
    sibling folder and renamed into place once complete, manifest included, so a crash never
    leaves a folder that looks built. ``evaluate`` scores the table of ``search.demo_table``
    (base, specialists, 50/50 average, hand-picked merge on the held-out split) and stores it
    in the manifest (recomputed alone when the table's definition changed). Torch runs on
    ``threads`` threads meanwhile (restored afterwards). ``progress`` shows a bar with the
    phase, the steps and an ETA while training, and another while scoring the table.
    """
    recipe = recipe or DemoRecipe()
    root = (out_dir or default_demo_dir()) / family_dirname(recipe.targets, seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        family = None if force else load_demo_family(root, recipe, seed)
        if family is None:
            _train_family(root, recipe, seed, progress=progress)
            family = load_demo_family(root, recipe, seed)
            if family is None:
                raise RuntimeError(f"demo family at {root} has no manifest after its build")
            family.cached = False
        if evaluate:
            manifest = json.loads((root / MANIFEST).read_text())
            if not family.table or manifest.get("table_key") != TABLE_KEY:
                started = time.perf_counter()
                family.table = family_table(root, threads=threads, progress=progress)
                if not family.cached:
                    family.build_seconds += time.perf_counter() - started
                manifest.update(
                    table=family.table,
                    table_key=TABLE_KEY,
                    build_seconds=round(family.build_seconds, 1),
                )
                _write_json(root / MANIFEST, manifest)
        return family
    finally:
        torch.set_num_threads(previous_threads)


def check_family_folder(root: Path) -> None:
    """A rebuild replaces ``root``: refuse (exit 2) unless it is a new or empty folder or a demo
    family (it holds the manifest), and never a file, the working directory, the home folder
    or a folder holding them (``merging.outputs``)."""
    check_output(root, [], flag="demo family")
    if root.is_dir() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        raise ConfigError(
            f"{root}: holds files but no demo family ({MANIFEST}); the demo replaces only its "
            "own folders: choose another --out"
        )


def _train_family(root: Path, recipe: DemoRecipe, seed: int, *, progress: bool = False) -> None:
    """Train base and specialists into a temporary folder, then rename it to ``root``."""
    check_family_folder(root)  # before minutes of training, not after
    started = time.perf_counter()
    tmp = temp_sibling(root)
    cleanup_stale_temps(root)
    bar = BuildProgress.for_recipe(recipe, enabled=progress)
    try:
        tokenizer = build_tokenizer(recipe.vocab_size)
        base = build_model(tokenizer, recipe, seed)
        train(
            base,
            tokenizer,
            base_mixture(recipe),
            steps=recipe.base_steps,
            lr=recipe.base_lr,
            recipe=recipe,
            rng=random.Random(seed),
            progress=bar,
            phase="base",
        )
        words = demo_tasks.training_words(
            random.Random(seed + demo_tasks.DATA_SEED), recipe.targets
        )
        probe = [next(words) for _ in range(recipe.probe_words)]
        # Whether the base picks up the rare target tasks at all varies with the seed; the
        # specialists' task vectors only add up when it knows each of them a little. So keep
        # training it until each target reaches its `base_floors` value on the probe, boosting only the
        # targets still below it (`up` is learnt much faster than `rev` and would overshoot).
        mixture = base_mixture(recipe)

        def knows_targets(model: LlamaForCausalLM) -> bool:
            scores = {t: probe_exact_match(model, tokenizer, t, probe) for t in recipe.targets}
            low = {t for t, score in scores.items() if score < recipe.floor(t)}
            for t in recipe.targets:  # the batches read the mixture as it changes
                mixture[t] = recipe.base_boost_weight if t in low else recipe.base_target_weight
            return not low

        if not knows_targets(base):
            train(
                base,
                tokenizer,
                mixture,
                steps=recipe.base_extra_max_steps,
                lr=recipe.base_extra_lr,
                recipe=recipe,
                rng=random.Random(seed + 1),
                until=knows_targets,
                progress=bar,
                phase="base: targets to their floors",
            )
        else:
            bar.skip(recipe.base_extra_max_steps)
        _save(base, tokenizer, tmp / BASE_DIR)
        for k, target in enumerate(recipe.targets, start=1):
            model = LlamaForCausalLM.from_pretrained(tmp / BASE_DIR)
            train(
                model,
                tokenizer,
                specialist_mixture(target, recipe),
                steps=recipe.specialist_max_steps,
                lr=recipe.specialist_lr,
                recipe=recipe,
                rng=random.Random(seed * 1000 + k),
                until=lambda m, t=target: (
                    probe_exact_match(m, tokenizer, t, probe) >= recipe.specialist_target
                ),
                progress=bar,
                phase=f"specialist {target}",
            )
            _save(model, tokenizer, tmp / specialist_dir(target))
        if recipe.targets != demo_tasks.EVAL_TASKS:  # the demo's own are in configs/tasks
            demo_tasks.write_task_files(tmp / TASKS_SUBDIR, recipe.targets)
        manifest = {
            "recipe": asdict(recipe),
            "digest": recipe.digest(seed),
            "seed": seed,
            "base": BASE_DIR,
            "specialists": {t: specialist_dir(t) for t in recipe.targets},
            "table": [],
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        _write_json(tmp / MANIFEST, manifest)
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        # OSError: another process renamed the same family into place first; keep theirs
        with contextlib.suppress(OSError):
            os.replace(tmp, root)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


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


def shipped_family(seed: int, recipe: DemoRecipe | None = None) -> DemoFamily | None:
    """The family that ships with the package for ``seed`` (with the default recipe), if any.

    Training is not bit-reproducible across CPUs (summation order), so the demo starts from
    these weights: every machine then sees the same base, specialists and scores. It is read in
    place and never written to.
    """
    from mergesearch.configs import DEMO_FAMILY_DIR

    return load_demo_family(DEMO_FAMILY_DIR / f"seed{seed}", recipe or DemoRecipe(), seed)


def _write_json(path: Path, data: dict) -> None:
    """Write ``path`` atomically: a reader sees the old file or the new one, never half."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _save(model: LlamaForCausalLM, tokenizer: Any, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
