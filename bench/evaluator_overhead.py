"""Per-call cost of the lm_eval evaluator against a bare ``simple_evaluate``, same tasks and items.

    python bench/evaluator_overhead.py [--calls 5] [--seed 0] [--out DIR | --family DIR] [--fresh-manager]

Scores the demo family's ``rev`` specialist on both search splits (400 greedy generations) and
prints a table: the model's own time (HFLM.generate_until on prebuilt requests, the floor), the
evaluator's first and later calls, and ``simple_evaluate`` with a reused TaskManager (and, with
``--fresh-manager``, with a new TaskManager per call, which indexes lm-eval's built-in tasks).
The family is built first if missing (see bench/demo_family.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from mergesearch import evaluators
from mergesearch.search.demo import tasks as demo_tasks
from mergesearch.search.demo.family import build_demo_family, load_demo_family

TASKS = [demo_tasks.task_name(t, "search") for t in demo_tasks.EVAL_TASKS]


def timed(fn, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


@contextlib.contextmanager
def cwd(path: Path):
    # bare lm-eval resolves relative data_files against the working directory
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh-manager", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="demo family folder root")
    parser.add_argument("--family", type=Path, default=None, help="a built family folder to use")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer, LlamaForCausalLM

    family = (
        load_demo_family(args.family)
        if args.family
        else build_demo_family(args.out, seed=args.seed, threads=args.threads)
    )
    tokenizer = AutoTokenizer.from_pretrained(family.base)
    model = LlamaForCausalLM.from_pretrained(family.specialists["rev"]).eval()
    rows: list[tuple[str, list[float], str]] = []

    started = time.perf_counter()
    evaluator = evaluators.get("lm_eval", tasks=TASKS, threads=args.threads)
    rows.append(("evaluator: get() (index + load tasks)", [time.perf_counter() - started], ""))
    first = timed(lambda: evaluator.evaluate(model, tokenizer), 1)
    rows.append(("evaluator: first evaluate (wrap + build requests)", first, ""))
    score = evaluator.evaluate(model, tokenizer).metrics
    rows.append(
        (
            "evaluator: later evaluate",
            timed(lambda: evaluator.evaluate(model, tokenizer), args.calls),
            str(score),
        )
    )

    lm = evaluator._lm
    instances = [i for t in evaluator.tasks.values() for i in t.instances]
    rows.append(
        (
            "model only: HFLM.generate_until",
            timed(lambda: lm.generate_until(instances, disable_tqdm=True), args.calls),
            "",
        )
    )

    tasks_dir = demo_tasks.TASKS_DIR
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)

    def bare(task_manager):
        with cwd(tasks_dir):
            return simple_evaluate(
                model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=32, device="cpu"),
                tasks=TASKS,
                task_manager=task_manager,
                bootstrap_iters=0,
                log_samples=False,
            )

    result = bare(manager)
    bare_score = {t: float(result["results"][t]["exact_match,strip"]) for t in TASKS}
    rows.append(
        (
            "simple_evaluate, TaskManager reused",
            timed(lambda: bare(manager), args.calls),
            str(bare_score),
        )
    )
    if args.fresh_manager:
        rows.append(
            (
                "simple_evaluate, new TaskManager (built-ins indexed)",
                timed(lambda: bare(TaskManager(include_path=str(tasks_dir))), 1),
                "",
            )
        )

    floor = statistics.median(rows[3][1])
    print(
        f"\n{len(instances)} requests ({', '.join(TASKS)}), torch threads {torch.get_num_threads()}\n"
    )
    print("| what | median s | over model-only s | scores |")
    print("|---|---|---|---|")
    for name, seconds, note in rows:
        med = statistics.median(seconds)
        over = f"{med - floor:+.3f}" if "evaluate" in name and "get()" not in name else ""
        print(f"| {name} | {med:.3f} | {over} | {note} |")


if __name__ == "__main__":
    main()
