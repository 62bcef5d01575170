"""GPU evaluation check: CPU-vs-GPU merge parity, trial timing and memory, in one command.

    python bench/gpu_check.py                 # the shipped demo family + a wide8 subset
    python bench/gpu_check.py --size tiny     # the shipped demo family only: seconds, no big files
    python bench/gpu_check.py --help

For each family and method: merge into a live model on the CPU, then into one on the GPU (the
engine streams each merged tensor from page-locked host buffers), and compare every tensor (max
abs diff; the merge math runs on the CPU both times, so it should be 0). Then a short search
(perplexity on ``configs/tasks/demo_text.txt``) runs with ``device: cpu`` and with ``device:
cuda``: merge and evaluation seconds per trial, peak host RSS and peak GPU memory. The
``wide8`` subset is the Mistral-7B-width family of ``bench/scale.py`` with ``--layers`` layers
(written to a temporary folder and deleted after).

Without a GPU it runs the CPU half, says so in one line and exits 0. Results print as a table
and, with ``--results PATH``, go to that file.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

METHODS = ("linear", "ties", "dare_ties")
GB = 2**30


def demo_family() -> list[Path]:
    """The canonical demo family that ships with the package (base + two specialists, 9.6 MB):
    on every machine, with no build and nothing borrowed from the tests."""
    from mergesearch.search.demo.family import shipped_family

    family = shipped_family(0)
    if family is None:
        raise SystemExit("the shipped demo family is missing: reinstall mergesearch")
    return [family.base, *family.specialists.values()]


def wide8_subset(work: Path, layers: int) -> list[Path]:
    from bench.scale import FAMILIES, write_model

    family = FAMILIES["7b"]  # base + 2 fine-tunes at Mistral-7B width
    paths = [work / f"wide-{i}" for i in range(family.models)]
    for i, path in enumerate(paths):
        write_model(path, family, layers, i)
    return paths


def config(method: str, paths: list[Path], dtype: str) -> dict[str, Any]:
    p = [str(x) for x in paths]
    if method == "linear":
        models = [{"model": m, "parameters": {"weight": 1 / len(p)}} for m in p]
        return {"merge_method": "linear", "models": models, "dtype": dtype}
    per = {"weight": 0.5, "density": 0.5}
    models = [{"model": m, "parameters": per} for m in p[1:]]
    return {"merge_method": method, "base_model": p[0], "models": models, "dtype": dtype}


def gpu_peak() -> float:
    return torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else 0.0


def rss_peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def merge_parity(name: str, paths: list[Path], dtype: str, gpu: bool) -> list[list[str]]:
    """Per method: seconds on the CPU and the GPU, max abs diff between the two models."""
    from mergesearch import merging

    rows = []
    merger = merging.Merger(cache_bytes=2 * GB, threads=torch.get_num_threads())
    for method in METHODS:
        cfg = config(method, paths, dtype)
        cpu_model = merger.new_model(cfg)
        started = time.perf_counter()
        merger.merge_into(cfg, cpu_model, seed=0)
        cpu_s = time.perf_counter() - started
        gpu_s, diff = "-", "-"
        if gpu:
            gpu_model = merger.new_model(cfg, device="cuda")
            torch.cuda.synchronize()
            started = time.perf_counter()
            merger.merge_into(cfg, gpu_model, seed=0)
            torch.cuda.synchronize()
            gpu_s = f"{time.perf_counter() - started:.2f}"
            worst = 0.0
            on_gpu = gpu_model.state_dict()
            for key, tensor in cpu_model.state_dict().items():
                other = on_gpu[key].cpu()
                worst = max(worst, float((other.double() - tensor.double()).abs().max()))
            diff = f"{worst:.1e}"
            del gpu_model, on_gpu
            torch.cuda.empty_cache()
        del cpu_model
        rows.append([name, method, dtype, f"{cpu_s:.2f}", gpu_s, diff])
    return rows


def search_trials(name: str, paths: list[Path], dtype: str, device: str, work: Path) -> list[str]:
    """A short search on ``device``: slowest merge and evaluation seconds, peak memory."""
    import optuna

    from bench.scale import perplexity_search
    from mergesearch.search import attrs as A
    from mergesearch.search.optimize.study import run_search

    spec = {
        "name": f"gpu-check-{name}-{device}",
        "storage": f"sqlite:///{work / f'{name}-{device}.db'}",
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "device": device,
        "cache_gb": 2,
        **perplexity_search(
            paths,
            methods=["ties", "linear"],
            density=(0.3, 0.9),
            max_length=64,
            windows=4,
            trials=3,
        ),
    }
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run_search(spec, progress=False, heldout=False)
    done = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    merge_s = max((t.user_attrs.get(A.MERGE_SECONDS, 0.0) for t in done), default=0.0)
    eval_s = max((t.user_attrs.get(A.EVAL_SECONDS, 0.0) for t in done), default=0.0)
    gpu = f"{gpu_peak():.2f}" if device == "cuda" else "-"
    return [
        name,
        device,
        f"{len(done)}/3",
        f"{merge_s:.2f}",
        f"{eval_s:.2f}",
        f"{rss_peak():.2f}",
        gpu,
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU-vs-GPU merge parity, trial timing and memory (demo family, wide8 subset)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--size",
        choices=["tiny", "full"],
        default="full",
        help="tiny: the demo family only; full: also a wide8 subset (GBs, minutes)",
    )
    parser.add_argument("--layers", type=int, default=2, help="layers of the wide8 subset")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--results", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    merges, trials = [], []
    try:
        families = [("demo", demo_family(), "float32")]
        if args.size == "full":
            families.append((f"wide8-{args.layers}l", wide8_subset(work, args.layers), "bfloat16"))
        for fam, fam_paths, dtype in families:
            merges += merge_parity(fam, fam_paths, dtype, gpu)
            print(
                table(["family", "method", "dtype", "cpu s", "gpu s", "max abs diff"], merges[-3:])
            )
            devices = ["cpu", "cuda"] if gpu else ["cpu"]
            if fam.startswith("wide8") and gpu:
                devices = ["cuda"]  # evaluating a 7B-width model on 2 CPU cores takes minutes
            for device in devices:
                trials.append(search_trials(fam, fam_paths, dtype, device, work))
                print(" | ".join(trials[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = "\n\n".join(
        [
            table(["family", "method", "dtype", "cpu s", "gpu s", "max abs diff"], merges),
            table(
                ["family", "device", "trials", "merge s", "eval s", "peak RSS GiB", "peak GPU GiB"],
                trials,
            ),
        ]
    )
    print("\n" + report)
    print(f"\ntook {time.perf_counter() - started:.0f} s")
    if args.results is not None:
        args.results.write_text(report + "\n")
    if not gpu:
        print("no CUDA device here: ran the CPU half only (merges and a search on the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
