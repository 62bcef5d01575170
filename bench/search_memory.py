"""Peak memory of a search on the 0.4B-parameter benchmark family, against the cache bound.

The search keeps one live model (rebuilt only when the architecture changes) and a bounded
cache of source tensors (``cache_gb`` in the spec), so its memory should stay under
``interpreter + cache bound + one model + a few tensors``, however many trials run and however
many sources there are. This script runs a few trials of a real ``run_search`` over the
float32 Llama family that ``bench/merge_speed.py`` builds (3 x 1.7 GB), scored by a cheap
evaluator (one forward pass on a short text), samples the process RSS every 20 ms with psutil,
and prints the bound, the model size and the peak. Results go to ``bench/RESULTS_memory.md``.

    python bench/merge_speed.py --skip-mergekit --methods linear   # builds bench/out/models/full
    python bench/search_memory.py                                   # cache_gb 1, 8 trials
    python bench/search_memory.py --cache-gb 3 --trials 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mergesearch.evaluators import EvalResult  # noqa: E402

FAMILY = REPO_ROOT / "bench" / "out" / "models" / "full"
RESULTS = REPO_ROOT / "bench" / "RESULTS_memory.md"
GB = 2**30
# The cache bound covers every source tensor and result the engine holds, cached or in flight
# (merging.engine._TensorCache), so the slack is for what no bound can name: Python objects of
# the trials and the live model's module around its weights.
SLACK_GB = 0.1
TEXT = "the quick brown fox jumps over the lazy dog while the merge search keeps its memory"


def score(model: Any, tokenizer: Any, *, limit: int | None = None) -> EvalResult:
    """Minus the language-model loss on one short text: a real forward pass, in a second."""
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"][:, :32]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return EvalResult(metrics={"memory/neg_loss": -float(loss)})


class PeakSampler:
    """RSS of this process every ``interval`` seconds, in a thread; ``peak`` is the maximum."""

    def __init__(self, interval: float = 0.02):
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def spec(storage: str, cache_gb: float, trials: int) -> dict[str, Any]:
    models = sorted(p for p in FAMILY.iterdir() if p.is_dir())
    return {
        "name": "memory",
        "storage": storage,
        "cache_gb": cache_gb,
        "sources": {
            "base": str(models[0]),
            "models": {f"m{i}": str(p) for i, p in enumerate(models[1:], start=1)},
        },
        "methods": ["linear", "task_arithmetic"],
        "parameters": {"weight": {"low": 0.1, "high": 1.0}, "lambda": {"low": 0.5, "high": 1.5}},
        "objectives": [
            {
                "name": "memory",
                "evaluator": "python",
                "metric": "memory/neg_loss",
                "options": {"callable": "bench.search_memory:score"},
                "splits": {"search": {}},
            }
        ],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": trials},
    }


def warm_up(tmp: Path) -> None:
    """Load the code a first trial loads (Optuna's RDB storage, the Llama modules), so that
    "before" holds the program and the peak above it only data."""
    import optuna
    from transformers import LlamaForCausalLM  # noqa: F401

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{tmp}/warm-up.db").optimize(lambda t: 0.0, 1)


def model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-gb", type=float, default=1.0, help="the spec's cache bound")
    parser.add_argument("--trials", type=int, default=8, help="trials, baselines included")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not FAMILY.is_dir():
        print(f"no benchmark family in {FAMILY}; build it with bench/merge_speed.py first")
        return 1

    from mergesearch.search import run_search

    torch.set_num_threads(args.threads)
    model_size = model_bytes(next(p for p in sorted(FAMILY.iterdir()) if p.is_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        data = spec(f"sqlite:///{tmp}/study.db", args.cache_gb, args.trials)
        data["threads"] = args.threads
        warm_up(Path(tmp))
        baseline = psutil.Process().memory_info().rss
        started = time.perf_counter()
        with PeakSampler() as sampler:
            result = run_search(data, progress=False)
        seconds = time.perf_counter() - started
        trials = result.study.trials
        done = sum(t.state.name == "COMPLETE" for t in trials)

    bound = args.cache_gb * GB
    limit = baseline + bound + model_size + SLACK_GB * GB
    rows = [
        ("cache bound (cache_gb)", bound),
        ("one model (fp32 safetensors)", model_size),
        ("RSS before the search (interpreter, code)", baseline),
        ("peak RSS during the search", sampler.peak),
        ("peak - before", sampler.peak - baseline),
        ("allowed: before + bound + model + slack", limit),
    ]
    ok = sampler.peak <= limit
    lines = [f"{name:<46} {value / GB:7.2f} GiB" for name, value in rows]
    lines.append(f"{'within the allowance':<46} {'yes' if ok else 'NO'}")
    lines.append(f"{'trials (complete/total), wall':<46} {done}/{len(trials)}, {seconds:.0f} s")
    table = "\n".join(lines)
    print(table)
    _write_results(args, table, ok)
    return 0 if ok else 1


def _write_results(args: argparse.Namespace, table: str, ok: bool) -> None:
    family = json.loads((FAMILY / "family.json").read_text())
    RESULTS.write_text(
        "# Search memory: peak RSS against the tensor-cache bound\n\n"
        f"`python bench/search_memory.py --cache-gb {args.cache_gb:g} --trials {args.trials}` on "
        f"{dt.date.today():%Y-%m-%d}: the float32 Llama family of `bench/merge_speed.py` "
        f"({family['dims']}; 3 models), methods linear and task_arithmetic, random sampler, "
        f"{args.threads} torch thread(s), scored by one forward pass on a short text. RSS "
        "sampled every 20 ms with psutil.\n\n"
        f"```\n{table}\n```\n\n"
        "The allowance is the process's RSS once its code is loaded, plus the cache bound "
        "(which covers every source tensor and result the engine holds, cached or in flight), "
        "plus one model (the live model every trial overwrites), plus "
        f"{SLACK_GB:g} GiB for Python objects. Without a bound the cache would hold every "
        "source tensor read: 3 x 1.6 GiB here.\n"
        + ("" if ok else "\n**The peak exceeded the allowance.**\n")
    )


if __name__ == "__main__":
    raise SystemExit(main())
