"""Per-trial time of the search's in-memory path against a naive loop, on the demo models.

In-memory (what ``mergesearch search`` does): merge into one live model, score it with an
evaluator built once per process. Times come from the study itself (``merge_seconds``,
``eval_seconds`` user attributes, and each trial's wall time).

Naive (what a script around mergekit + lm-eval does per candidate): merge to disk, load the
folder with ``transformers``, evaluate with ``lm_eval.simple_evaluate`` and a fresh
``TaskManager``. Measured in this process, so it does not even pay interpreter start-up and
imports, as a CLI loop would. The same candidates (their stored merge configs) are used, the
scores are checked to agree, and the timings are stored in the study (``naive_loop``).

    python bench/search_naive_vs_inmemory.py            # demo family seed 0, 6 trials, 3 naive
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mergesearch.search import attrs as A  # noqa: E402


def naive_trial(config_yaml: str, tasks: list[str], work: Path) -> dict:
    import lm_eval
    import torch
    import yaml
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergesearch import merging

    config = merging.load_merge_config(yaml.safe_load(config_yaml))
    out = work / f"candidate-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    merging.Merger(cache_bytes=0).merge_to_disk(config, out, progress=False)
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    t2 = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=32, device="cpu")
    tasks_dir = ROOT / "configs" / "tasks"
    with contextlib.chdir(tasks_dir):  # plain lm-eval reads data_files relative to the cwd
        results = _simple_evaluate(lm_eval, lm, tasks, TaskManager(include_path=str(tasks_dir)))
    t3 = time.perf_counter()
    scores = {t: results["results"][t]["exact_match,strip"] for t in tasks}
    return {
        "merge_to_disk": t1 - t0,
        "load": t2 - t1,
        "eval": t3 - t2,
        "total": t3 - t0,
        "scores": scores,
    }


def reload_trial(config_yaml: str, scorer, work: Path) -> float:
    """Merge to disk and reload, but score with the search's evaluator (built once): what is
    left of the naive loop's cost once lm-eval's per-run set-up is gone."""
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergesearch import merging

    config = merging.load_merge_config(yaml.safe_load(config_yaml))
    out = work / f"reload-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    merging.Merger(cache_bytes=0).merge_to_disk(config, out, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    scorer.score(model, tokenizer, "search")
    return time.perf_counter() - t0


def _simple_evaluate(lm_eval, lm, tasks, manager) -> dict:
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=False,
        random_seed=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="demo family seed")
    parser.add_argument("--trials", type=int, default=6, help="search trials after the baselines")
    parser.add_argument("--naive", type=int, default=3, help="candidates re-run the naive way")
    parser.add_argument("--storage", default="sqlite:///results/bench-naive/study.db")
    args = parser.parse_args()

    import optuna
    import torch

    from mergesearch.search.cli.demo import demo_spec
    from mergesearch.search.demo.family import build_demo_family
    from mergesearch.search.distributed.storage import open_storage
    from mergesearch.search.optimize.scoring import Scorer
    from mergesearch.search.optimize.study import run_search

    torch.set_num_threads(1)
    family = build_demo_family(seed=args.seed, threads=1)
    spec = demo_spec(family, args.seed)
    spec["name"] = f"bench-naive-seed{args.seed}"
    with contextlib.suppress(KeyError):  # start fresh: timings of this run only
        optuna.delete_study(study_name=spec["name"], storage=open_storage(args.storage))
    result = run_search(
        spec,
        storage=args.storage,
        n_trials=4 + args.trials,
        sampler="random",
        progress=False,
        heldout=False,
    )
    study = result.study
    trials = [t for t in study.trials if A.BASELINE not in t.user_attrs and t.values]
    tasks = sorted({o.splits["search"].task for o in result.spec.objectives})

    naive = {}
    scorer = Scorer(result.spec)
    with tempfile.TemporaryDirectory() as work:
        for trial in trials[: args.naive]:
            config = trial.user_attrs[A.MERGE_CONFIG]
            naive[trial.number] = naive_trial(config, tasks, Path(work))
            naive[trial.number]["reload_only"] = reload_trial(config, scorer, Path(work))
    study.set_user_attr(
        "naive_loop",
        {str(n): {k: round(v, 3) for k, v in d.items() if k != "scores"} for n, d in naive.items()},
    )

    print(f"demo family seed {args.seed}; search split {tasks}; torch threads 1\n")
    print(
        f"{'trial':>5} {'method':<16} {'merge':>7} {'eval':>7} {'wall':>7} | "
        f"{'to disk':>7} {'load':>6} {'eval':>7} {'total':>7} | {'speed-up':>8} | "
        f"{'reload':>6}  scores agree"
    )
    ratios = []
    for t in trials:
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        merge, ev = t.user_attrs[A.MERGE_SECONDS], t.user_attrs[A.EVAL_SECONDS]
        row = f"{t.number:>5} {t.user_attrs[A.METHOD]:<16} {merge:7.3f} {ev:7.3f} {wall:7.3f} | "
        if t.number in naive:
            n = naive[t.number]
            ratios.append(n["total"] / wall)
            ours = t.user_attrs[A.METRICS]
            same = all(
                abs(n["scores"][o.splits["search"].task] - ours[o.name]["search"]) < 1e-9
                for o in result.spec.objectives
            )
            row += (
                f"{n['merge_to_disk']:7.3f} {n['load']:6.3f} {n['eval']:7.3f} "
                f"{n['total']:7.3f} | {ratios[-1]:7.1f}x | {n['reload_only']:6.2f}  {same}"
            )
        print(row)
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    print(
        f"\nin-memory per trial: median wall {statistics.median(walls):.2f} s "
        f"(merge {statistics.median(t.user_attrs[A.MERGE_SECONDS] for t in trials):.3f} s, "
        f"eval {statistics.median(t.user_attrs[A.EVAL_SECONDS] for t in trials):.2f} s)"
    )
    naive_totals = [d["total"] for d in naive.values()]
    print(
        f"naive per trial:     median {statistics.median(naive_totals):.2f} s "
        "(to disk, reload, lm-eval simple_evaluate with a fresh TaskManager)"
    )
    reloads = [d["reload_only"] for d in naive.values()]
    print(f"to disk + reload, evaluator reused: median {statistics.median(reloads):.2f} s")
    print(
        f"speed-up on the same candidates: median {statistics.median(ratios):.1f}x "
        f"(min {min(ratios):.1f}x)"
    )
    print(f"study {spec['name']!r} in {args.storage} (user attribute naive_loop)")


if __name__ == "__main__":
    main()
