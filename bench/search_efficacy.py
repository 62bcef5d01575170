"""The search-efficacy suite: how far from the best known merge does a strategy end?

    python bench/search_efficacy.py build [--only NAME ...] [--force]
    python bench/search_efficacy.py grid NAME
    python bench/search_efficacy.py demo-table [--only NAME ...]
    python bench/search_efficacy.py reference [--only NAME ...] [--force]
    python bench/search_efficacy.py run [--strategies auto tpe cmaes gp random auto+mf ...]
        [--budgets 30 60 120] [--seeds 0 1 2] [--only NAME ...]
    python bench/search_efficacy.py rescore [--only NAME ...]

``build`` builds every landscape's family (``bench/efficacy/landscapes.py``; minutes each, cached
under ``bench/out/efficacy/``) and prints base, specialists and 50/50 average on the held-out
split. ``grid`` scores a grid of hand-set merges of one landscape (chosen on search, shown
held-out), to check by hand where the plain average stands. ``reference`` runs one long search
per landscape over all the suite's methods and records, in the committed
``bench/efficacy/reference.json``, the held-out score of the merge it chose on the search split:
recorded once, not recomputed every run (``--force`` redoes a landscape). ``run`` searches every
landscape with each strategy x budget x seed and reports regret = reference - held-out score of
the merge chosen on the search split: median and worst per strategy and budget, written to
``bench/RESULTS_efficacy.md`` with a plot of regret against items spent. ``demo-table`` runs the
shipped ``configs/searches/demo.yaml`` on every demo family (six seeds x one and two torch
threads) and prints its margin over the better specialist: the table of ``bench/RESULTS_demo.md``. Each run is cached in
``bench/efficacy/runs.json`` (committed, with the digest of the weights it searched; its study in
SQLite under ``bench/out/``), so a rerun resumes. A regret comes with its standard error, paired
by held-out item against the reference (``bench/efficacy/paired.py``); ``rescore`` rebuilds the
merges of references and runs recorded before that was kept and scores them again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")  # everything is local: never wait on the network

from bench.efficacy import landscapes as L  # noqa: E402
from bench.efficacy import paired, report  # noqa: E402

# The reference search: one constant, so that switching it (to the uniform method portfolio,
# once it lands) is one edit. TPE with 100 random start-up trials (each method sampled often
# before TPE narrows) and a joint model of the parameters; plain TPE settles on one method
# early. Its budget counts search trials; baselines come on top.
REFERENCE_SAMPLER: dict[str, Any] = {
    "name": "tpe",
    "options": {"n_startup_trials": 100, "multivariate": True},
}
REFERENCE_TRIALS = 500
REFERENCE_SEED = 0
REFERENCE_JSON = ROOT / "bench" / "efficacy" / "reference.json"
# committed beside the references: a later session on the same CPU builds the same weights
# (their digests match) and carries on where this one stopped
RUNS_JSON = ROOT / "bench" / "efficacy" / "runs.json"
STRATEGIES = ("auto", "tpe", "cmaes", "gp", "random")
# Strategies that are a sampler with options: the method portfolio with one multivariate TPE
# per method (`auto-tpe`, the default inner sampler since the portfolio landed) or with one
# CMA-ES shared by all methods (`auto-cmaes`). `auto` is whichever is the default.
VARIANTS: dict[str, dict[str, Any]] = {
    "auto-tpe": {"name": "auto", "options": {"inner": "tpe"}},
    "auto-cmaes": {"name": "auto", "options": {"inner": "shared-cmaes"}},
}
# What the portfolio does besides its inner sampler (allocation, starting points), as a number
# to raise with each change, so that earlier runs of a portfolio strategy are run again rather
# than reported as the current code's. 1: default points at mid-range weights; 2: default
# weights equal and summing to one (the plain average, for task arithmetic too).
PORTFOLIO_REVISION = 2
# Multi-fidelity variants: `<sampler>+mf` searches with the staged pruner (each candidate scored
# on 25 items per task, the best third of those goes on to 100, the best third again to the
# whole split): the same trials for far fewer evaluated items.
MF_SUFFIX = report.MF_SUFFIX
# `<sampler>+mf+cap`: multi-fidelity, and an item budget of half its trial budget's unpruned
# items, so that `auto+mf+cap` at 120 trials spends what `auto` spends at 60 (not a share that
# happens to be near it)
CAP_SUFFIX = report.CAP_SUFFIX
MF_PRUNER: dict[str, Any] = {"name": "halving", "stages": [25, 100, None]}
# `demo`: the shipped configs/searches/demo.yaml as it is (its methods, sampler and budget),
# pointed at a demo landscape's family; only on landscapes with the demo's targets.
DEMO_STRATEGY = "demo"
BUDGETS = (30, 60, 120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build every landscape and print its table")
    grid = sub.add_parser("grid", help="score a grid of hand-set merges of one landscape")
    grid.add_argument("name", help="landscape name")
    reference = sub.add_parser("reference", help="record each landscape's reference score")
    run = sub.add_parser("run", help="regret of strategies x budgets x seeds")
    demo = sub.add_parser(
        "demo-table", help="the shipped demo search on each demo family (RESULTS_demo.md)"
    )
    rescore = sub.add_parser(
        "rescore", help="per-item scores of recorded merges: each regret's standard error"
    )
    for p in (build, reference, run, demo, rescore):
        p.add_argument("--only", nargs="+", metavar="NAME", help="these landscapes only")
    for p in (build, reference):
        p.add_argument("--force", action="store_true", help="redo what is built or recorded")
    run.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    run.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    _quiet()
    try:
        chosen = _landscapes(getattr(args, "only", None))
        if args.command == "build":
            return build_command(chosen, force=args.force)
        if args.command == "grid":
            return grid_command(L.get(args.name))
        if args.command == "demo-table":
            return demo_table_command(chosen)
        if args.command == "reference":
            return reference_command(chosen, force=args.force)
        if args.command == "rescore":
            return rescore_command(chosen)
        return run_command(chosen, args.strategies, args.budgets, args.seeds)
    except (KeyError, ValueError, FileNotFoundError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2


def _landscapes(names: list[str] | None) -> list[L.Landscape]:
    return [L.get(n) for n in names] if names else list(L.LANDSCAPES)


# --------------------------------------------------------------------------- build


def build_command(chosen: list[L.Landscape], *, force: bool) -> int:
    from tqdm import tqdm

    bar = tqdm(chosen, unit="landscape", desc="build", file=sys.stderr, dynamic_ncols=True)
    for landscape in bar:
        bar.set_postfix_str(landscape.name)
        started = time.perf_counter()
        family = L.build(landscape, force=force)
        how = "cached" if family.cached else f"built in {time.perf_counter() - started:.0f} s"
        bar.write(f"{landscape.name}: {how} at {family.root}", file=sys.stderr)
    bar.close()
    rows = report.landscape_rows(chosen)
    print(report.render_landscapes(rows))
    report.write_results(REFERENCE_JSON, RUNS_JSON)
    return 0


# --------------------------------------------------------------------------- grid


def grid_command(landscape: L.Landscape) -> int:
    from bench.efficacy.grid import grid_table

    if not L.is_built(landscape):
        raise FileNotFoundError(f"landscape {landscape.name!r} is not built; run build first")
    print(grid_table(landscape))
    return 0


# --------------------------------------------------------------------------- reference


def reference_command(chosen: list[L.Landscape], *, force: bool) -> int:
    from bench.efficacy.outcome import outcome
    from mergesearch.search.optimize.study import run_search

    recorded = _read_json(REFERENCE_JSON)
    for landscape in chosen:
        family = L.build(landscape)
        weights = L.weights_digest(landscape)
        key = report.weights_key(landscape.name, weights)
        if key in recorded and not force:
            print(
                f"{landscape.name}: recorded ({recorded[key]['reference']:.3f}); --force redoes it"
            )
            continue
        db = L.OUT / "reference" / f"{landscape.name}.db"
        if force and db.exists():
            db.unlink()
        db.parent.mkdir(parents=True, exist_ok=True)
        n_baselines = len(landscape.targets) + 2  # base, each specialist, the average
        spec = L.spec_for(
            landscape,
            methods=landscape.methods,
            sampler=REFERENCE_SAMPLER,
            budget=REFERENCE_TRIALS + n_baselines,
            seed=REFERENCE_SEED,
            storage=f"sqlite:///{db}",
            name=f"reference-{landscape.name}",
        )
        print(f"{landscape.name}: reference search, {REFERENCE_TRIALS} trials", flush=True)
        result = run_search(spec, progress=True)
        got = outcome(result)
        table = {row["model"]: row for row in family.table}
        specialists = {t: table[f"specialist {t}"]["mean"] for t in landscape.targets}
        best_specialist = max(specialists, key=specialists.get)
        recorded = _read_json(REFERENCE_JSON)  # another process may have recorded meanwhile
        recorded[key] = {
            "landscape": landscape.name,
            "reference": got.heldout,
            "search": got.search,
            "method": got.method,
            "trial": got.trial,
            "params": got.params,
            "merge_config": got.merge_config,
            "heldout_items": paired.encode_items(got.heldout_items),  # {} when none were kept
            "best_specialist": {"name": best_specialist, "heldout": specialists[best_specialist]},
            "average_heldout": table[next(k for k in table if k.endswith("average"))]["mean"],
            "base_heldout": table["base"]["mean"],
            "search_baselines_heldout": got.baselines,
            "trials": got.trials,
            "items": got.items,
            "sampler": REFERENCE_SAMPLER,
            "methods": list(landscape.methods),
            "seconds": got.seconds,
            "family": {
                "targets": list(landscape.targets),
                "seed": landscape.seed,
                "threads": landscape.threads,
                "digest": landscape.recipe.digest(landscape.seed),
                "weights": weights,
                "cpu": _cpu_name(),
            },
        }
        _write_json(REFERENCE_JSON, dict(sorted(recorded.items())))
        print(
            f"{landscape.name}: reference {got.heldout:.3f} ({got.method}, trial #{got.trial}, "
            f"search {got.search:.3f}); best specialist {specialists[best_specialist]:.3f}, "
            f"{got.seconds:.0f} s",
            flush=True,
        )
    report.write_results(REFERENCE_JSON, RUNS_JSON)
    return 0


# --------------------------------------------------------------------------- run


def run_command(
    chosen: list[L.Landscape], strategies: list[str], budgets: list[int], seeds: list[int]
) -> int:
    from tqdm import tqdm

    from mergesearch.search.optimize.registry import AUTO
    from mergesearch.search.spec.schema import SAMPLERS

    samplers = (*SAMPLERS, AUTO)  # auto: the default strategy, resolved per spec

    for strategy in strategies:
        base = report.unpruned(strategy)
        capped_alone = strategy.endswith(CAP_SUFFIX) and base + MF_SUFFIX + CAP_SUFFIX != strategy
        if capped_alone or (
            strategy != DEMO_STRATEGY and base not in samplers and base not in VARIANTS
        ):
            raise ValueError(
                f"strategy {strategy!r}: choose from {', '.join([*samplers, *VARIANTS])} "
                f"(each also as <name>{MF_SUFFIX} and <name>{MF_SUFFIX}{CAP_SUFFIX})"
            )
    if any(b < 1 for b in budgets):
        raise ValueError(f"budgets must be >= 1 trial, got {budgets}")
    references = _read_json(REFERENCE_JSON)
    digests = {ls.name: L.weights_digest(ls) for ls in chosen if L.is_built(ls)}  # hashed once
    missing = [
        ls.name
        for ls in chosen
        if report.weights_key(ls.name, digests.get(ls.name, "")) not in references
    ]
    if missing:
        raise ValueError(
            f"no reference recorded for the built weights of {', '.join(missing)}; "
            "run build and reference first"
        )
    runs = _read_json(RUNS_JSON)
    todo = [
        (landscape, strategy, budget, seed)
        for landscape in chosen
        for strategy in strategies
        for budget in ([_demo_budget()] if strategy == DEMO_STRATEGY else budgets)
        for seed in seeds
        if not _recorded(
            runs, run_key(landscape.name, strategy, budget, seed, digests[landscape.name]), strategy
        )
        and (strategy != DEMO_STRATEGY or landscape.targets == L.demo_tasks.EVAL_TASKS)
    ]
    bar = tqdm(todo, unit="run", desc="runs", file=sys.stderr, dynamic_ncols=True)
    for landscape, strategy, budget, seed in bar:
        bar.set_postfix_str(f"{landscape.name} {strategy} {budget} seed {seed}")
        run_one(landscape, strategy, budget, seed)
    bar.close()
    selected = [
        r
        for r in _read_json(RUNS_JSON).values()
        if r.get("weights") == digests.get(r["landscape"])
        and r["strategy"] in strategies
        and (r["budget"] in budgets or r["strategy"] == DEMO_STRATEGY)
        and r["seed"] in seeds
    ]
    print(report.render_regret(report.regret_rows(selected, references)))
    report.write_results(REFERENCE_JSON, RUNS_JSON)
    return 0


def run_one(landscape: L.Landscape, strategy: str, budget: int, seed: int) -> dict[str, Any]:
    """One search of the matrix, from the cache when it ran before (recorded when it ends)."""
    from bench.efficacy.outcome import outcome
    from mergesearch.search.optimize.study import run_search

    weights = L.weights_digest(landscape)
    key = run_key(landscape.name, strategy, budget, seed, weights)
    recipe = strategy_recipe(strategy)
    runs = _read_json(RUNS_JSON)
    if _recorded(runs, key, strategy):
        return runs[key]
    db = L.OUT / "runs" / f"{landscape.name}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    name = study_name(strategy, budget, seed, recipe)
    spec = run_spec(landscape, strategy, budget, seed, storage=f"sqlite:///{db}", name=name)
    got = outcome(run_search(spec, progress=False))
    record = {
        "landscape": landscape.name,
        "strategy": strategy,
        "budget": budget,
        "seed": seed,
        "weights": weights,
        **({"recipe": recipe} if recipe else {}),
        **got.to_dict(),
    }
    reference = _read_json(REFERENCE_JSON).get(report.weights_key(landscape.name, weights), {})
    record["regret_stderr"] = paired.regret_stderr(reference, got.heldout_items, landscape.targets)
    runs = _read_json(RUNS_JSON)  # another process may have recorded meanwhile
    runs[key] = record
    _write_json(RUNS_JSON, runs)
    return record


def run_spec(
    landscape: L.Landscape, strategy: str, budget: int, seed: int, *, storage: str, name: str
) -> dict[str, Any]:
    """The search spec of one run: the strategy's sampler, pruner and item budget."""
    if strategy == DEMO_STRATEGY:
        return _demo_spec(landscape, seed=seed, storage=storage, name=name)
    base = report.unpruned(strategy)
    spec = L.spec_for(
        landscape,
        methods=landscape.methods,
        sampler=VARIANTS.get(base, base),
        budget=budget,
        seed=seed,
        storage=storage,
        pruner=MF_PRUNER if base != strategy else None,
        name=name,
    )
    if strategy.endswith(CAP_SUFFIX):
        spec["budget"]["items"] = budget // 2 * L.items_per_trial(landscape)
    return spec


# --------------------------------------------------------------------------- rescore


def rescore_command(chosen: list[L.Landscape]) -> int:
    """Per-item held-out scores for what was recorded before they were kept: each reference's
    (recorded) and each run's regret standard error, for the built landscapes among ``chosen``.

    A merge is rebuilt from its recorded mergekit YAML and scored again; where the score differs
    from the recorded one the record is left alone and counted, never patched."""
    from tqdm import tqdm

    for landscape in chosen:
        if not L.is_built(landscape):
            continue
        weights = L.weights_digest(landscape)
        key = report.weights_key(landscape.name, weights)
        reference = _read_json(REFERENCE_JSON).get(key)
        if reference is None:
            continue
        rescorer = paired.Rescorer(landscape)
        if not reference.get("heldout_items"):
            items = rescorer.items_as_recorded(reference["merge_config"], reference["reference"])
            if items is None:
                print(f"{landscape.name}: the reference rebuilt to another score; left alone")
                continue
            recorded = _read_json(REFERENCE_JSON)
            recorded[key]["heldout_items"] = reference["heldout_items"] = paired.encode_items(items)
            _write_json(REFERENCE_JSON, recorded)
        todo = {
            k: r
            for k, r in _read_json(RUNS_JSON).items()
            if r["landscape"] == landscape.name
            and r.get("weights") == weights
            and r.get("regret_stderr") is None
            and r.get("merge_config")
        }
        differ = 0
        bar = tqdm(
            todo.items(),
            total=len(todo),
            unit="run",
            desc=landscape.name,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for k, record in bar:
            items = rescorer.items_as_recorded(record["merge_config"], record["heldout"])
            if items is None:
                differ += 1
                continue
            runs = _read_json(RUNS_JSON)  # another process may have recorded meanwhile
            runs[k]["regret_stderr"] = paired.regret_stderr(reference, items, landscape.targets)
            _write_json(RUNS_JSON, runs)
        print(
            f"{landscape.name}: {len(todo) - differ} of {len(todo)} runs rescored"
            + (f"; {differ} rebuilt to another score, left alone" if differ else ""),
            flush=True,
        )
    report.write_results(REFERENCE_JSON, RUNS_JSON)
    return 0


def _shipped_demo_spec() -> dict[str, Any]:
    import yaml

    from mergesearch.search.cli.demo import DEMO_SPEC

    return yaml.safe_load(DEMO_SPEC.read_text())


def _demo_budget() -> int:
    return int(_shipped_demo_spec()["budget"]["trials"])


def _recorded(runs: dict[str, Any], key: str, strategy: str) -> bool:
    """Whether ``key`` ran under the strategy's current recipe."""
    return key in runs and runs[key].get("recipe") == strategy_recipe(strategy)


def strategy_recipe(strategy: str) -> str | None:
    """What a strategy's name alone does not pin down, as a short digest (``None``: nothing):
    a run recorded under another recipe is run again, not reported as this one's.

    ``auto`` depends on the portfolio's default inner sampler; ``demo`` on the shipped demo spec
    minus what a landscape replaces, and on ``auto`` (the spec's sampler); every portfolio
    strategy on ``PORTFOLIO_REVISION``; a multi-fidelity one on its pruner's settings, a capped
    one on its item budget too."""
    from mergesearch.search.optimize.portfolio import DEFAULT_INNER

    recipe: dict[str, Any] = {}
    base = report.unpruned(strategy)
    if strategy == DEMO_STRATEGY:
        spec = _shipped_demo_spec()
        recipe = {k: v for k, v in spec.items() if k not in ("name", "sources")}
    if base == "auto" or strategy == DEMO_STRATEGY:
        recipe["auto_inner"] = DEFAULT_INNER
    if base == "auto" or base in VARIANTS or strategy == DEMO_STRATEGY:
        recipe["portfolio"] = PORTFOLIO_REVISION
    if base != strategy:
        recipe["pruner"] = MF_PRUNER
    if strategy.endswith(CAP_SUFFIX):
        recipe["items"] = "half the trial budget's, unpruned"
    if not recipe:
        return None
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def _demo_spec(landscape: L.Landscape, *, seed: int, storage: str, name: str) -> dict[str, Any]:
    """The shipped demo spec on this landscape's family, with only the search seed changed
    (its threads too: they are part of the recipe)."""
    from mergesearch.search.cli.demo import demo_spec
    from mergesearch.search.demo.family import load_demo_family

    family = load_demo_family(landscape.root, landscape.recipe, landscape.seed)
    if family is None:
        raise FileNotFoundError(f"landscape {landscape.name!r} is not built; run build first")
    spec = demo_spec(family, landscape.seed)
    spec.update(name=name, storage=storage, seed=seed)
    return spec


def study_name(strategy: str, budget: int, seed: int, recipe: str | None = None) -> str:
    """The run's study name; a study name takes letters, digits, '.', '_' and '-' only, so the
    multi-fidelity ``auto+mf`` is ``auto-mf`` there."""
    return f"{strategy.replace('+', '-')}-b{budget}-s{seed}" + (f"-{recipe}" if recipe else "")


def run_key(landscape: str, strategy: str, budget: int, seed: int, weights: str) -> str:
    """Runs on the weights another CPU trained are kept beside these, under their own key."""
    return f"{report.weights_key(landscape, weights)}|{strategy}|{budget}|{seed}"


# --------------------------------------------------------------------------- demo table


def demo_table_command(chosen: list[L.Landscape]) -> int:
    """``configs/searches/demo.yaml`` as shipped (search seed 0) on each demo family: does its
    best merge beat the better specialist by +0.10 held out, whatever CPU trained the family?"""
    families = [ls for ls in chosen if ls.targets == L.demo_tasks.EVAL_TASKS]
    rows = []
    for landscape in families:
        family = L.build(landscape)
        record = run_one(landscape, DEMO_STRATEGY, _demo_budget(), 0)
        rows.append(report.demo_row(landscape, family.table, record))
        print(report.render_demo_table(rows[-1:], header=len(rows) == 1), flush=True)
    print()
    print(report.render_demo_table(rows))
    print(report.demo_verdict(rows))
    return 0


# --------------------------------------------------------------------------- helpers


def _cpu_name() -> str:
    """The CPU that trained the families, as precisely as the kernels care: a virtual machine
    may call two CPU generations "AMD EPYC", and their matrix kernels (AVX2 or AVX-512) sum in
    other orders, so family, model and vector extension are part of the name."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in info.splitlines())
    )
    flags = set(fields.get("flags", "").split())
    vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), "no AVX")
    return (
        f"{fields.get('model name', platform.machine())} "
        f"(family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vector})"
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: an interrupted run never leaves half a cache or half a reference file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _quiet() -> None:
    """Progress bars and tables are the output: no bars or warnings from the libraries."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
