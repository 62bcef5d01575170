"""The synthetic string tasks of the demo model family, and their lm-eval task files.

Every task maps a word of 3-5 random lowercase letters to an answer, prompted as
``Q: <keyword> <word> A:`` and answered `` <answer>`` then EOS. Seven tasks make the base model's
pretraining mixture; two of them (``rev`` and ``up``, ``EVAL_TASKS``) are what the demo's
specialists learn and what the demo search scores. Other families (``DemoRecipe.targets``) pick
other targets, so every task has evaluation data.

Evaluation words are fixed (``DATA_SEED``): per task a ``search`` split that a search may
optimise on and a ``heldout`` split to report, with disjoint words, and no word shared between
tasks. They are drawn task after task in ``TASKS`` order, ``rev`` and ``up`` first, so adding
tasks left the demo's words (and the families trained around them) as they were. The demo's
files are committed under ``configs/tasks/``; ``write_task_files`` writes any task's into any
folder. Training words are drawn per model seed and never hit an evaluation word of the tasks a
family is scored on. ``python -m mergesearch.search.demo.tasks`` regenerates the committed files
byte for byte.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mergesearch.configs import TASKS_DIR

DATA_SEED = 1234
SPLIT_SIZE = 200
SPLITS = ("search", "heldout")
EVAL_TASKS = ("rev", "up")
TEXT_FILE = "demo_text.txt"


@dataclass(frozen=True)
class StringTask:
    name: str
    keyword: str
    answer: Callable[[str], str]


def _caesar(word: str) -> str:
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in word)


TASKS: dict[str, StringTask] = {
    t.name: t
    for t in (
        StringTask("rev", "reverse", lambda w: w[::-1]),
        StringTask("up", "upper", str.upper),
        StringTask("copy", "copy", lambda w: w),
        StringTask("shift", "shift", _caesar),
        StringTask("sort", "sort", lambda w: "".join(sorted(w))),
        StringTask("double", "double", lambda w: "".join(c + c for c in w)),
        StringTask("swap", "swap", lambda w: w[-1] + w[1:-1] + w[0]),
    )
}


def prompt(task: str, word: str) -> str:
    return f"Q: {TASKS[task].keyword} {word} A:"


def random_word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))


def eval_records(task: str, split: str) -> list[dict[str, str]]:
    """The evaluation items of one task and split, exactly as written to the JSONL files."""
    words = _eval_words()[task]
    chosen = words[:SPLIT_SIZE] if split == "search" else words[SPLIT_SIZE:]
    return [{"word": w, "prompt": prompt(task, w), "answer": TASKS[task].answer(w)} for w in chosen]


def eval_words(tasks: Iterable[str] = ()) -> frozenset[str]:
    """Every evaluation word of the demo's tasks (``EVAL_TASKS``) and of ``tasks``."""
    wanted = set(EVAL_TASKS) | set(check_tasks(tasks))
    return frozenset(w for task, words in _eval_words().items() if task in wanted for w in words)


@functools.cache
def _eval_words() -> dict[str, tuple[str, ...]]:
    rng = random.Random(DATA_SEED)
    taken: set[str] = set()
    per_task: dict[str, tuple[str, ...]] = {}
    for task in TASKS:  # rev and up first: their words stay those of the committed files
        words: list[str] = []
        while len(words) < 2 * SPLIT_SIZE:
            w = random_word(rng)
            if w not in taken:
                taken.add(w)
                words.append(w)
        per_task[task] = tuple(words)
    return per_task


def training_words(rng: random.Random, tasks: Iterable[str] = ()) -> Iterator[str]:
    """An endless stream of training words, disjoint from the evaluation splits of the demo's
    tasks and of ``tasks``.

    Only those words are excluded, not every task's: a family trained on the demo's targets
    draws exactly the words it drew before other tasks had evaluation data.
    """
    excluded = eval_words(tasks)
    while True:
        w = random_word(rng)
        if w not in excluded:
            yield w


def check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """``tasks`` as a tuple, or ``ValueError`` naming the first unknown one."""
    tasks = tuple(tasks)
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown demo task {task!r}; choose from {', '.join(TASKS)}")
    return tasks


def task_name(task: str, split: str) -> str:
    return f"demo_{task}_{split}"


def exact_match_yaml(max_gen_toks: int) -> str:
    """The lines of an lm-eval task YAML that make it greedy generation up to the end of the
    line, scored by exact match of the whitespace-stripped answer (``exact_match,strip``):
    the demo's tasks, and the tasks the evaluator's tests build."""
    return f"""\
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def _task_yaml(task: str, split: str, max_gen_toks: int) -> str:
    # data_files is relative to this YAML; the lm_eval evaluator resolves it against the YAML's
    # folder (plain lm-eval would resolve it against the current directory). doc_to_text and
    # doc_to_target name fields rather than Jinja templates: lm-eval compiles a template anew
    # for every document it scores, a cost on every evaluation (bench/RESULTS_demo.md).
    header = f"""\
# Generated by `python -m mergesearch.search.demo.tasks`; do not edit by hand.
task: {task_name(task, split)}
tag: demo_{split}
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/{task}_{split}.jsonl
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
target_delimiter: " "
"""
    return header + exact_match_yaml(max_gen_toks) + "metadata:\n  version: 1.0\n"


def _demo_text(n_lines: int = 120) -> str:
    """Solved prompts of every task, for the perplexity evaluator's example."""
    rng = random.Random(DATA_SEED + 1)
    words = training_words(rng)
    names = sorted(TASKS)
    lines = []
    for _ in range(n_lines):
        task, word = rng.choice(names), next(words)
        lines.append(f"{prompt(task, word)} {TASKS[task].answer(word)}")
    return "\n".join(lines) + "\n"


def write_task_files(out_dir: Path = TASKS_DIR, tasks: Iterable[str] = EVAL_TASKS) -> list[Path]:
    """Write the JSONL splits of ``tasks``, their task YAMLs and the perplexity text into
    ``out_dir`` (lm-eval's ``include_path``); return the paths."""
    tasks = check_tasks(tasks)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        for split in SPLITS:
            records = eval_records(task, split)
            jsonl = data_dir / f"{task}_{split}.jsonl"
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
            # one token per letter plus the leading space and EOS, with a little room
            max_gen_toks = max(len(r["answer"]) for r in records) + 3
            yaml_path = out_dir / f"{task_name(task, split)}.yaml"
            yaml_path.write_text(_task_yaml(task, split, max_gen_toks))
            written += [jsonl, yaml_path]
    text = out_dir / TEXT_FILE
    text.write_text(_demo_text())
    written.append(text)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write the demo tasks' lm-eval files")
    parser.add_argument("--out", type=Path, default=TASKS_DIR, help="folder (default: %(default)s)")
    parser.add_argument(
        "--tasks", nargs="+", default=list(EVAL_TASKS), choices=list(TASKS), help="tasks to write"
    )
    args = parser.parse_args(argv)
    for path in write_task_files(args.out, args.tasks):
        print(path)


if __name__ == "__main__":
    main()
