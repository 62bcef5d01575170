"""Do guided samplers beat random search on the demo? cmaes, tpe and random at equal budget.

Runs the demo search (``configs/searches/demo.yaml`` on demo family seed 0) once per sampler and
seed, each in its own study of one SQLite file (re-running resumes unfinished studies), then
prints the best-so-far curves (best search-split score among the search trials, baselines
excluded) as a table, the held-out score of each run's best merge, and saves a PNG plot.

    python bench/search_samplers.py                      # 3 samplers x 3 seeds x 40 trials
    python bench/search_samplers.py --trials 20 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mergesearch.search import attrs as A  # noqa: E402

CHECKPOINTS = (5, 10, 15, 20, 25, 30, 36, 50, 75, 100)


def curve(study) -> list[float]:
    """Best-so-far value after each search trial (in trial order), baselines left out."""
    best, out = float("-inf"), []
    for t in study.trials:
        if A.BASELINE in t.user_attrs or t.state.name in ("RUNNING", "WAITING"):
            continue
        if t.state.name == "COMPLETE":
            best = max(best, t.values[0])
        out.append(best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["cmaes", "tpe", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=36, help="search trials per run")
    parser.add_argument("--family-seed", type=int, default=0)
    parser.add_argument("--storage", default="sqlite:///results/bench-samplers/study.db")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()

    import torch

    from mergesearch.search.cli.demo import demo_spec
    from mergesearch.search.demo.family import build_demo_family
    from mergesearch.search.optimize.study import run_search

    torch.set_num_threads(1)
    family = build_demo_family(seed=args.family_seed, threads=1)
    runs = {}
    for sampler in args.samplers:
        for seed in args.seeds:
            spec = demo_spec(family, args.family_seed)
            spec["name"] = f"bench-{sampler}-seed{seed}-family{args.family_seed}"
            started = time.perf_counter()
            n_baselines = 4
            result = run_search(
                spec,
                storage=args.storage,
                sampler=sampler,
                seed=seed,
                n_trials=n_baselines + args.trials,
                progress=False,
            )
            best = result.summary.best[0] if result.summary.best else None
            runs[(sampler, seed)] = {
                "curve": curve(result.study)[: args.trials],
                "heldout": best.heldout_score if best else None,
                "best_method": best.method if best else None,
                "seconds": time.perf_counter() - started,
            }
            print(
                f"{sampler:>6} seed {seed}: best {runs[(sampler, seed)]['curve'][-1]:.4f} "
                f"({runs[(sampler, seed)]['best_method']}), held-out "
                f"{runs[(sampler, seed)]['heldout']}, {runs[(sampler, seed)]['seconds']:.0f} s",
                flush=True,
            )
    report(runs, args)


def report(runs: dict, args: argparse.Namespace) -> None:
    points = [c for c in CHECKPOINTS if c <= args.trials]
    if args.trials not in points:
        points.append(args.trials)
    print(
        f"\nbest-so-far search score (mean EM of rev and up, search split) after N search "
        f"trials; demo family seed {args.family_seed}; 4 baselines not counted"
    )
    head = (
        f"{'sampler':>8} {'seed':>4} "
        + " ".join(f"{p:>6}" for p in points)
        + "  held-out  best method"
    )
    print(head)
    for (sampler, seed), run in runs.items():
        cells = " ".join(f"{run['curve'][p - 1]:6.3f}" for p in points)
        held = f"{run['heldout']:.3f}" if run["heldout"] is not None else "-"
        print(f"{sampler:>8} {seed:>4} {cells}  {held:>8}  {run['best_method']}")
    means = {}
    for sampler in args.samplers:
        curves = [runs[(sampler, s)]["curve"] for s in args.seeds]
        means[sampler] = [statistics.mean(c[i] for c in curves) for i in range(args.trials)]
        cells = " ".join(f"{means[sampler][p - 1]:6.3f}" for p in points)
        held = [runs[(sampler, s)]["heldout"] for s in args.seeds if runs[(sampler, s)]["heldout"]]
        held_text = f"{statistics.mean(held):.3f}" if held else "-"
        print(f"{sampler:>8} {'mean':>4} {cells}  {held_text:>8}")
    if "random" in means:
        print("\nguided minus random (mean over seeds):")
        for sampler in args.samplers:
            if sampler == "random":
                continue
            diffs = " ".join(
                f"{means[sampler][p - 1] - means['random'][p - 1]:+6.3f}" for p in points
            )
            auc = statistics.mean(means[sampler]) - statistics.mean(means["random"])
            print(f"{sampler:>8}      {diffs}   (area under curve {auc:+.4f})")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_samplers.json").write_text(
        json.dumps({f"{k[0]}/{k[1]}": v for k, v in runs.items()}, indent=1)
    )
    plot(runs, means, args)


def plot(runs: dict, means: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"cmaes": "tab:blue", "tpe": "tab:orange", "random": "tab:gray", "gp": "tab:green"}
    x = list(range(1, args.trials + 1))
    for sampler, mean in means.items():
        color = colors.get(sampler)
        for seed in args.seeds:
            ax.plot(x, runs[(sampler, seed)]["curve"], color=color, alpha=0.25, linewidth=1)
        ax.plot(x, mean, color=color, linewidth=2.2, label=f"{sampler} (mean of {len(args.seeds)})")
    ax.set_xlabel("search trial (baselines not counted)")
    ax.set_ylabel("best search score so far (mean EM)")
    ax.set_title(f"demo search, family seed {args.family_seed}: samplers at equal budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = args.out / "search_samplers.png"
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
