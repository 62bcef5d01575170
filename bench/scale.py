"""Real-size merges: Mistral-7B-width bfloat16 families, the disk's floor, both tools, one run.

    python bench/scale.py --size wide8                          # 8 of 32 layers, base + 3, every method
    python bench/scale.py --size 7b --methods linear ties --no-verify   # 32 layers, base + 2
    python bench/scale.py --size 7b --methods --search-trials 1 # one in-memory search trial
    python bench/scale.py --size wide8 --layers 2 --methods linear ties --skip-mergekit
    python bench/scale.py --size tiny                           # a minute: checks the script

The family is written straight to safetensors shards, tensor by tensor, from a seeded generator
(no model is ever instantiated): the base is N(0, 0.02) (norms 1), each fine-tune the base plus
its own small noise. Free disk is checked first, counting the outputs; everything made is
deleted at the end (``--keep`` keeps the family for the next run).

Per method, in this order and in the same run: the I/O floor (read every input the method needs
once, write one output's bytes once, fsync; the fastest of ``--floor-runs`` measurements) and
beside it the mapped floor (the inputs mapped and faulted in, as the merge takes them, instead
of read: no copy out of the page cache),
``mergesearch merge``, then mergekit 0.1.5 (from
``$MERGEKIT_VENV`` or ``.venv-mergekit``), time-boxed (``--mergekit-timeout``, 20 minutes): past
it, mergekit is stopped and timed on a one-layer subset instead, and its full time is estimated
from that rate (the table says so). Peak RSS of each tool comes from ``wait4`` of a small
wrapper process (``merge_speed.timed_run``). ``--search-trials N`` runs N trials of an
in-memory search over the family (perplexity on a short text) and records merge and evaluation
seconds and peak RSS. Results go to ``bench/RESULTS_scale.md`` (one section per family, kept
across runs; ``--size tiny`` writes only with ``--results``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench._mergekit import compare_outputs, find_mergekit  # noqa: E402
from bench.merge_speed import (  # noqa: E402
    ARCEE_MAX_FLIPPED,
    CUTS,
    NEWER_METHODS,
    RANDOM_METHODS,
    Run,
    machine_summary,
    mergekit_cmd,
    mergekit_env,
    mergesearch_cmd,
    method_config,
    referenced_models,
    timed_run,
)
from mergesearch.merging.checkpoint import MappedRows  # noqa: E402
from mergesearch.merging.direct_io import open_output  # noqa: E402

GB = 1e9
MISTRAL = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
}


@dataclass(frozen=True)
class Family:
    dims: dict[str, int]
    layers: int
    models: int  # base + fine-tunes
    shard_bytes: int


FAMILIES = {
    "wide8": Family(MISTRAL, 8, 4, 2 * 10**9),
    "7b": Family(MISTRAL, 32, 3, 2 * 10**9),
    # same tensor kinds and GQA, a few MB: runs through every step in about a minute
    "tiny": Family(
        {
            "hidden_size": 256,
            "intermediate_size": 896,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "vocab_size": 2048,
        },
        2,
        4,
        2 * 10**6,
    ),
}
# Targets of the real-size issue: elementwise methods at the floor, selecting ones within 2x.
NEAR_FLOOR = ("linear", "slerp", "nuslerp", "task_arithmetic", "model_stock", "passthrough",
              "multislerp", "nearswap")  # fmt: skip
NEAR_FLOOR_TARGET = 1.2
SELECTING_TARGET = 2.0
RSS_TARGET = 1.5 * GB
METHODS = [
    "linear", "slerp", "nuslerp", "task_arithmetic", "model_stock", "passthrough", "ties",
    "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
    *NEWER_METHODS,
]  # fmt: skip
MERGEKIT_TIMEOUT = 20 * 60
SUBSET_LAYERS = 1
TEXT = REPO_ROOT / "configs" / "tasks" / "demo_text.txt"


# ---------------------------------------------------------------------------------------------
# The family, written tensor by tensor


def tensor_shapes(family: Family, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Mistral tensor names and shapes in checkpoint order (grouped-query attention)."""
    d = family.dims
    h, i, v = d["hidden_size"], d["intermediate_size"], d["vocab_size"]
    kv = h // d["num_attention_heads"] * d["num_key_value_heads"]
    shapes = [("model.embed_tokens.weight", (v, h))]
    for layer in range(layers):
        p = f"model.layers.{layer}."
        shapes += [
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
        ]
        shapes += [
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
        ]
        shapes += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h))]
        shapes += [(p + "mlp.down_proj.weight", (h, i))]
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]  # fmt: skip
    return [*shapes, ("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def model_bytes(family: Family, layers: int) -> int:
    return sum(2 * math.prod(shape) for _, shape in tensor_shapes(family, layers))


def _chunks(shape: tuple[int, ...], elements: int = 1 << 24) -> list[tuple[int, int]]:
    rows = shape[0]
    step = max(1, elements // max(1, math.prod(shape[1:])))
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


def make_chunk(index: int, chunk: int, shape: tuple[int, ...], model: int) -> torch.Tensor:
    """Rows ``chunk`` of tensor ``index`` of ``model`` in bfloat16: the base's values (seeded by
    tensor and chunk alone, so every fine-tune regenerates them), plus the model's noise."""
    gen = torch.Generator().manual_seed(index * 1_000_003 + chunk)
    norm = len(shape) == 1
    values = torch.ones(shape) if norm else torch.randn(shape, generator=gen).mul_(0.02)
    if model > 0:
        gen.manual_seed((index * 1_000_003 + chunk) * 101 + model)
        values.add_(torch.randn(shape, generator=gen), alpha=0.05 if norm else 0.001)
    return values.to(torch.bfloat16)


def write_model(out: Path, family: Family, layers: int, model: int) -> None:
    """One checkpoint in shards of ``family.shard_bytes``: headers first, then bytes streamed
    chunk by chunk (memory: one chunk), the index, ``config.json`` and a tokenizer."""
    from transformers import MistralConfig

    from mergesearch.search.demo.family import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(family, layers)
    groups: list[list[tuple[int, str, tuple[int, ...]]]] = [[]]
    used = 0
    for index, (name, shape) in enumerate(shapes):
        size = 2 * math.prod(shape)
        if groups[-1] and used + size > family.shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append((index, name, shape))
        used += size
    weight_map = {}
    for k, group in enumerate(groups):
        filename = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for _, name, shape in group:
            end = offset + 2 * math.prod(shape)
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
            weight_map[name] = filename
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out / filename, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            for index, _, shape in group:
                for c, (start, stop) in enumerate(_chunks(shape)):
                    part = make_chunk(index, c, (stop - start, *shape[1:]), model)
                    fh.write(memoryview(part.view(torch.uint8).numpy()))
    total = model_bytes(family, layers)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = MistralConfig(**family.dims, num_hidden_layers=layers, dtype="bfloat16")
    config.architectures = ["MistralForCausalLM"]  # mergekit picks its tensor layout by this
    config.tie_word_embeddings = False
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    config.save_pretrained(out)
    build_tokenizer().save_pretrained(out)  # any tokenizer: the merges only copy it


def build_family(root: Path, family: Family, layers: int) -> list[Path]:
    """``root/model_{0..}``, reused when a kept earlier build has the same stamp."""
    from tqdm.auto import tqdm

    stamp = root / "family.json"
    wanted = {"dims": family.dims, "layers": layers, "models": family.models, "format": 1}
    paths = [root / f"model_{i}" for i in range(family.models)]
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    for i, path in enumerate(tqdm(paths, desc="writing the family", unit="model")):
        write_model(path, family, layers, i)
    stamp.write_text(json.dumps(wanted))
    print(f"wrote {len(paths)} models in {time.perf_counter() - started:.0f} s under {root}")
    return paths


def check_disk(where: Path, need: int, what: str) -> str | None:
    """None if ``need`` bytes fit on the disk holding ``where``, else the one-line refusal."""
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need + GB <= free:  # keep a GB spare for everything else on the machine
        return None
    return (
        f"{where}: needs {need / GB:.1f} GB ({what}) + 1 GB spare, the disk has "
        f"{free / GB:.1f} GB free; free space, pass --work on a larger disk or --layers N"
    )


# ---------------------------------------------------------------------------------------------
# Configs


def config_for(method: str, paths: list[Path], layers: int) -> dict[str, Any]:
    """One representative YAML per method (``paths[0]`` is the base), in bfloat16."""
    p = [str(x) for x in paths]
    extra = {
        "nuslerp": {
            "base_model": p[0],
            "models": [
                {"model": p[1], "parameters": {"weight": 0.6}},
                {"model": p[-1], "parameters": {"weight": 0.4}},
            ],
        },
        "dare_linear": "dare_ties",
        "breadcrumbs_ties": "breadcrumbs",
        "della_linear": "della",
    }
    body = extra.get(method)
    if isinstance(body, str):  # same models and parameters as its sibling
        doc = {**method_config(body, p, layers), "merge_method": method}
    elif body is not None:
        doc = {"merge_method": method, **body}
    else:
        doc = method_config(method, p, layers)
    return {**doc, "dtype": "bfloat16"}


def subset_config(doc: dict[str, Any], layers: int) -> dict[str, Any]:
    """``doc`` restricted to its first ``layers`` layers (the slices form): what a time-boxed
    mergekit run is timed on instead."""
    if "slices" in doc:
        return doc
    sources = []
    for m in doc["models"]:
        source = {"model": m["model"], "layer_range": [0, layers]}
        if "parameters" in m:
            source["parameters"] = m["parameters"]
        sources.append(source)
    base = doc.get("base_model")
    if base is not None and base not in [m["model"] for m in doc["models"]]:
        sources.append({"model": base, "layer_range": [0, layers]})
    rest = {k: v for k, v in doc.items() if k != "models"}
    return {**rest, "slices": [{"sources": sources}]}


def target_of(method: str) -> float:
    return NEAR_FLOOR_TARGET if method in NEAR_FLOOR else SELECTING_TARGET


# ---------------------------------------------------------------------------------------------
# Measuring


def read_once(paths: list[Path]) -> tuple[float, int]:
    """Seconds to read every safetensors file under ``paths`` once, and the bytes read."""
    files = [f for p in paths for f in sorted(p.glob("*.safetensors"))]
    view = memoryview(bytearray(64 * 2**20))
    total = 0
    started = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while got := fh.readinto(view):
                total += got
    return time.perf_counter() - started, total


def map_once(paths: list[Path]) -> float:
    """Seconds to map every safetensors file under ``paths`` and fault it in, as the merge's
    reader takes its sources (``MappedRows.populate``): no copy out of the page cache, which
    ``read_once`` pays."""
    files = [f for p in paths for f in sorted(p.glob("*.safetensors"))]
    started = time.perf_counter()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            MappedRows(fd, 0, size, torch.uint8, (size,)).populate()
        finally:
            os.close(fd)
    return time.perf_counter() - started


def write_once(target: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` to ``target`` and fsync it (the file is removed after).

    The bytes go out as the merge's own output does (``direct_io.open_output``: ``O_DIRECT``
    where the filesystem takes it, ``MERGESEARCH_DIRECT_IO=0`` for the page cache), so the floor
    is the fastest way this disk takes a file, not a slower one the merge avoids."""
    chunk = torch.zeros(64 * 2**20, dtype=torch.uint8)
    os.sync()
    started = time.perf_counter()
    out = open_output(target)
    left = nbytes
    while left:
        out.write(chunk[: min(left, chunk.numel())])
        left -= min(left, chunk.numel())
    out.close()
    with open(target, "rb") as fh:
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def io_floor(
    needed: list[Path], out_bytes: int, work: Path, runs: int, *, share_read: bool = False
) -> tuple[float, float, float]:
    """``(read s, floor s, mapped floor s)``: the fastest of ``runs`` measurements of reading
    every input once and writing one output once (with fsync); the mapped floor maps the
    inputs instead of reading them (``map_once``), as the merge does.

    One measurement of the same bytes moved between 4.7 and 25 s on a shared virtual disk, so
    a single floor made the x-floor ratios noise; the fastest is what the disk can deliver, the
    strictest yardstick. ``share_read``: the method reads only one output's worth of its
    inputs (passthrough keeps some layers of each), so the read is scaled to that.
    """
    best: tuple[float, float, float] | None = None
    for _ in range(max(1, runs)):
        read_s, read_bytes = read_once(needed)
        map_s = map_once(needed)
        if share_read:
            read_s *= out_bytes / read_bytes
            map_s *= out_bytes / read_bytes
        write_s = write_once(work / "floor.bin", out_bytes)
        if best is None or read_s + write_s < best[1]:
            best = (read_s, read_s + write_s, map_s + write_s)
    assert best is not None
    return best


def checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@dataclass
class Row:
    method: str
    n_models: int = 0
    floor_s: float = 0.0
    read_s: float = 0.0
    mapped_floor_s: float = 0.0  # the inputs mapped, not read (``map_once``)
    ours: Run | None = None
    theirs: Run | None = None
    theirs_estimate: float | None = None  # seconds, from a subset run when the time box hit
    diff: str = "-"
    notes: list[str] = field(default_factory=list)

    def ok(self, run: Run | None) -> bool:
        return run is not None and run.exit_code == 0 and not math.isnan(run.seconds)

    @property
    def theirs_seconds(self) -> float | None:
        if self.ok(self.theirs):
            return self.theirs.seconds  # type: ignore[union-attr]
        return self.theirs_estimate

    @property
    def merge_s(self) -> float | None:
        """The merge's own seconds as ``mergesearch merge`` reports them (config read to output
        complete; without the interpreter's start and imports, 1.8-2.3 s on wide8 here)."""
        if not self.ok(self.ours):
            return None
        found = re.search(r" in ([0-9.]+) s$", self.ours.log_tail.strip())  # type: ignore[union-attr]
        return float(found.group(1)) if found else None

    def misses(self) -> list[str]:
        if not self.ok(self.ours):
            return ["ours failed"]
        assert self.ours is not None
        out = []
        target = target_of(self.method)
        if self.floor_s and self.ours.seconds > target * self.floor_s:
            out.append(f"> {target:g}x floor")
        if self.ours.peak_rss > RSS_TARGET:
            out.append(f"RSS > {RSS_TARGET / GB:g} GB")
        return out


def run_method(
    method: str, paths: list[Path], layers: int, work: Path, args: argparse.Namespace
) -> Row:
    doc = config_for(method, paths, layers)
    config = work / f"{method}.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    needed = [Path(m) for m in sorted(referenced_models(doc))]
    row = Row(method, len(needed))
    ours_out, ref_out = work / f"{method}-ours", work / f"{method}-mergekit"
    out_bytes = model_bytes(FAMILIES[args.size], layers)
    row.read_s, row.floor_s, row.mapped_floor_s = io_floor(
        needed, out_bytes, work, args.floor_runs, share_read=method == "passthrough"
    )

    os.sync()
    row.ours = timed_run(mergesearch_cmd(config, ours_out, args.threads), timeout=4 * 3600)
    if not row.ok(row.ours):
        row.notes.append("ours: " + (row.ours.log_tail.strip().splitlines() or ["?"])[-1])
    if not args.verify:
        shutil.rmtree(ours_out, ignore_errors=True)

    if args.mergekit is not None:
        os.sync()
        row.theirs = timed_run(
            mergekit_cmd(args.mergekit, config, ref_out, args.threads),
            mergekit_env(),
            timeout=args.mergekit_timeout,
        )
        if math.isnan(row.theirs.seconds) or row.theirs.exit_code in (-9, 137):
            shutil.rmtree(ref_out, ignore_errors=True)
            row.theirs_estimate = _mergekit_estimate(doc, work, method, args, out_bytes, layers)
            row.notes.append(
                f"mergekit: stopped at the {args.mergekit_timeout:.0f} s time box; its time is "
                f"estimated from a {SUBSET_LAYERS}-layer subset run at the same bytes per second"
            )
        elif row.theirs.exit_code:
            row.notes.append("mergekit: " + (row.theirs.log_tail.strip().splitlines() or ["?"])[-1])
        elif args.verify and row.ok(row.ours):
            row.diff = _compare(method, ours_out, ref_out, paths, layers, row)
    shutil.rmtree(ours_out, ignore_errors=True)
    shutil.rmtree(ref_out, ignore_errors=True)
    return row


def _mergekit_estimate(
    doc: dict[str, Any],
    work: Path,
    method: str,
    args: argparse.Namespace,
    out_bytes: int,
    layers: int,
) -> float | None:
    """mergekit's full time, scaled from a run on the first layers by output bytes."""
    subset = work / f"{method}-subset.yaml"
    subset.write_text(yaml.safe_dump(subset_config(doc, SUBSET_LAYERS), sort_keys=False))
    out = work / f"{method}-subset-mergekit"
    run = timed_run(mergekit_cmd(args.mergekit, subset, out, args.threads), mergekit_env())
    written = checkpoint_bytes(out) if out.is_dir() else 0
    shutil.rmtree(out, ignore_errors=True)
    if run.exit_code or not written:
        return None
    return run.seconds * out_bytes / written


def _compare(method: str, ours: Path, ref: Path, paths: list[Path], layers: int, row: Row) -> str:
    if method in RANDOM_METHODS or method in ("dare_linear", "della_linear"):
        return "random"
    cut = CUTS.get(method.removesuffix("_ties") if method == "breadcrumbs_ties" else method)
    if cut is not None and cut.kind != "variance":  # one density per fine-tune
        cut = replace(cut, densities=(cut.densities[0],) * (len(paths) - 1))
    switched = (paths[0], paths[1]) if method == "arcee_fusion" else None
    result = compare_outputs(ours, ref, method, method, paths, cut, switched, ARCEE_MAX_FLIPPED)
    result.layers_expected = layers
    # bfloat16: a few last-place differences are expected (this engine sums in float32, mergekit
    # in bfloat16): the column shows the diff, the notes only what does not match in structure
    row.notes += [p for p in result.problems() if not p.startswith("max abs diff")]
    text = f"{result.max_abs_diff:.1e}"
    if cut:
        text += f" ({result.excluded} tied)"
    if switched:
        text += f" ({result.flipped} flipped)"
    return text


# ---------------------------------------------------------------------------------------------
# A search trial


@dataclass
class Trial:
    trials: int
    run: Run
    merge_s: float | None
    eval_s: float | None
    read_s: float
    cache_gb: float
    merges: tuple[float, ...] = ()  # every trial's merge seconds, in trial order


def perplexity_search(
    paths: list[Path],
    *,
    methods: list[str],
    density: tuple[float, float],
    max_length: int,
    windows: int,
    trials: int,
) -> dict[str, Any]:
    """What the real-size benchmarks' search specs share (this one's and ``gpu_check``'s):
    ``paths[0]`` the base, the rest its fine-tunes; weight and density ranges; perplexity on
    the demo text over ``windows`` windows of ``max_length`` tokens; ``trials`` random
    trials, no baselines."""
    return {
        "baselines": False,
        "sources": {
            "base": str(paths[0]),
            "models": {f"m{i}": str(p) for i, p in enumerate(paths[1:], 1)},
        },
        "methods": methods,
        "parameters": {
            "weight": {"low": 0.2, "high": 1.0},
            "density": {"low": density[0], "high": density[1]},
        },
        "objectives": [
            {
                "name": "ppl",
                "evaluator": "perplexity",
                "metric": f"{TEXT.stem}/perplexity",
                "direction": "minimize",
                "options": {"path": str(TEXT), "max_length": max_length, "stride": max_length - 1},
                "splits": {"search": {"limit": windows}},
            }
        ],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": trials},
    }


def run_search_trials(paths: list[Path], work: Path, args: argparse.Namespace) -> Trial:
    """``mergesearch search`` for ``args.search_trials`` trials of ties over the family, scored
    by perplexity on a short text; merge and evaluation seconds from the study."""
    db = work / "search.db"
    spec = {
        "name": "scale",
        "storage": f"sqlite:///{db}",
        "threads": args.threads,
        "dtype": "bfloat16",
        "cache_gb": args.cache_gb,
        **perplexity_search(
            paths,
            methods=["ties"],
            density=(0.2, 0.8),
            max_length=128,
            windows=2,
            trials=args.search_trials,
        ),
    }
    spec_path = work / "search.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    read_s, _ = read_once(paths)
    exe = Path(sys.executable).parent / "mergesearch"
    run = timed_run([str(exe), "search", str(spec_path), "--no-progress"], timeout=4 * 3600)
    merge_s = eval_s = None
    merges: list[float] = []
    if db.is_file():
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "SELECT key, value_json FROM trial_user_attributes "
                "WHERE key IN ('merge_seconds', 'eval_seconds') ORDER BY trial_id"
            ).fetchall()
        merges = [json.loads(v) for k, v in rows if k == "merge_seconds"]
        evals = [json.loads(v) for k, v in rows if k == "eval_seconds"]
        merge_s = max(merges) if merges else None
        eval_s = max(evals) if evals else None
    return Trial(args.search_trials, run, merge_s, eval_s, read_s, args.cache_gb, tuple(merges))


# ---------------------------------------------------------------------------------------------
# Report


def _s(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def format_rows(rows: list[Row]) -> str:
    lines = [
        "| method | models | floor s | mergesearch s | x floor | merge s in process | x floor "
        "| mapped floor s | x mapped floor "
        "| mergekit s | x floor | speed-up | RSS ours / mergekit GB | max abs diff | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = r.ours.seconds if r.ok(r.ours) else None  # type: ignore[union-attr]
        theirs = r.theirs_seconds
        est = "~" if theirs is not None and not r.ok(r.theirs) else ""
        rss_theirs = _gb(r.theirs.peak_rss) if r.ok(r.theirs) else "-"  # type: ignore[union-attr]
        rss_ours = _gb(r.ours.peak_rss) if ours is not None else "-"  # type: ignore[union-attr]
        cells = [
            r.method,
            str(r.n_models),
            _s(r.floor_s),
            _s(ours) if ours is not None else "FAILED",
            f"{ours / r.floor_s:.2f}" if ours and r.floor_s else "-",
            _s(r.merge_s),
            f"{r.merge_s / r.floor_s:.2f}" if r.merge_s and r.floor_s else "-",
            _s(r.mapped_floor_s or None),
            f"{r.merge_s / r.mapped_floor_s:.2f}" if r.merge_s and r.mapped_floor_s else "-",
            est + _s(theirs) if theirs is not None else ("FAILED" if r.theirs else "-"),
            f"{est}{theirs / r.floor_s:.1f}" if theirs and r.floor_s else "-",
            f"{est}{theirs / ours:.1f}x" if theirs and ours else "-",
            f"{rss_ours} / {rss_theirs}",
            r.diff,
            f"<= {target_of(r.method):g}x floor, RSS <= {RSS_TARGET / GB:g}",
            "; ".join(r.misses()) or "yes",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_trial(t: Trial) -> str:
    ratio = f"{t.merge_s / t.read_s:.2f}" if t.merge_s and t.read_s else "-"
    return "\n".join(
        [
            "| trials | merge s (slowest) | merge s, trial by trial | eval s (slowest) "
            "| read the sources once s | merge / read | peak RSS GB | cache_gb | exit |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {t.trials} | {_s(t.merge_s)} | {', '.join(_s(m) for m in t.merges) or '-'} "
            f"| {_s(t.eval_s)} | {_s(t.read_s)} | {ratio} "
            f"| {_gb(t.run.peak_rss)} | {t.cache_gb:g} | {t.run.exit_code} |",
        ]
    )


def _gb(n: float) -> str:
    return f"{n / GB:.2f}"


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the ``## heading`` section of ``path`` (or add it), keeping every other one."""
    title = "# Real-size merges and searches: mergesearch vs mergekit 0.1.5\n"
    text = path.read_text() if path.is_file() else title
    parts = text.split("\n## ")
    kept = [parts[0].rstrip("\n")] + [
        p.rstrip("\n") for p in parts[1:] if p.split("\n", 1)[0] != heading
    ]
    kept.append(f"{heading}\n\n{body.strip()}")
    path.write_text("\n\n## ".join(kept) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Real-size bfloat16 merge benchmark (Mistral-7B width): floor, "
        "mergesearch, mergekit 0.1.5, peak RSS; writes bench/RESULTS_scale.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--size", choices=sorted(FAMILIES), default="wide8")
    parser.add_argument("--layers", type=int, help="layers of the family (default: the size's)")
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=METHODS,
        help="default: every method; none with --search-trials",
    )
    parser.add_argument("--skip-mergekit", action="store_true", help="time mergesearch only")
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="do not compare the two outputs (then only one output is on disk at a time)",
    )
    parser.add_argument("--mergekit-timeout", type=float, default=MERGEKIT_TIMEOUT)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="both tools")
    parser.add_argument(
        "--floor-runs", type=int, default=2, help="measure each floor this often, keep the fastest"
    )
    parser.add_argument("--search-trials", type=int, default=0, help="trials of a search run")
    parser.add_argument("--cache-gb", type=float, default=2.0, help="cache_gb of that search")
    parser.add_argument("--work", type=Path, help="default: bench/out/scale-<size>")
    parser.add_argument("--results", type=Path, help="default: bench/RESULTS_scale.md (not tiny)")
    parser.add_argument("--keep", action="store_true", help="keep the family for the next run")
    args = parser.parse_args(argv)

    family = FAMILIES[args.size]
    layers = args.layers or family.layers
    methods = METHODS if args.methods is None else args.methods
    if not methods and not args.search_trials:
        parser.error("nothing to run: give --methods or --search-trials")
    work = args.work or REPO_ROOT / "bench" / "out" / f"scale-{args.size}"
    results = args.results
    if results is None and args.size != "tiny":
        results = REPO_ROOT / "bench" / "RESULTS_scale.md"
    args.mergekit = None if args.skip_mergekit or not methods else find_mergekit()
    if methods and not args.skip_mergekit and args.mergekit is None:
        print("mergekit 0.1.5 not found ($MERGEKIT_VENV or .venv-mergekit): timing ours only")

    size = model_bytes(family, layers)
    outputs = 2 if args.verify and args.mergekit is not None else 1
    stamp = work / "models" / "family.json"
    have = family.models * size if stamp.is_file() else 0  # a kept family already counts
    problem = check_disk(
        work, family.models * size - have + outputs * size, f"{family.models} models of "
        f"{size / GB:.1f} GB + {outputs} output(s)"
    )  # fmt: skip
    if problem:
        print(problem + ("; or pass --no-verify" if outputs == 2 else ""), file=sys.stderr)
        return 2

    work.mkdir(parents=True, exist_ok=True)
    label = f"{args.size} ({layers} layers, {family.models} models of {size / GB:.2f} GB)"
    command = "python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()[0]
    try:
        paths = build_family(work / "models", family, layers)
        rows = []
        for method in methods:
            rows.append(run_method(method, paths, layers, work, args))
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
        trial = run_search_trials(paths, work, args) if args.search_trials else None
    finally:
        for entry in work.iterdir() if work.is_dir() else []:
            if entry.name != "models" or not args.keep:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    head = (
        f"- Run: {dt.datetime.now().isoformat(timespec='minutes')}, `{command.strip()}`\n"
        f"- Machine: {machine_summary()}; 1-min load {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end\n"
        f"- Family: Mistral-7B width ({family.dims}), bfloat16 in and out, "
        f"{family.shard_bytes / GB:g} GB shards; base + {family.models - 1} fine-tunes\n"
        f"- Floor: the method's inputs read once + one output written once + fsync, measured "
        f"right before each method, the fastest of {args.floor_runs}; mapped floor: the same "
        f"inputs mapped and faulted in instead of read, as the merge takes them; "
        f"{args.threads} threads "
        f"for both tools; mergekit time box "
        f"{args.mergekit_timeout:.0f} s (~: estimated from a {SUBSET_LAYERS}-layer subset)\n"
    )
    body = head
    if rows:
        body += "\n" + format_rows(rows) + "\n"
        notes = [f"- {r.method}: {n}" for r in rows for n in r.notes]
        if notes:
            body += "\nNotes:\n" + "\n".join(notes) + "\n"
    if trial is not None:
        body += f"\nSearch ({args.search_trials} trial(s), ties, perplexity):\n\n"
        body += format_trial(trial) + "\n"
        if trial.run.exit_code:
            body += f"\nsearch: {(trial.run.log_tail.strip().splitlines() or ['?'])[-1]}\n"
        print(format_trial(trial))
    print("\n" + body)
    if results is not None:
        heading = label if rows else f"{label}: search"
        replace_section(results, heading, body)
        print(f"written to {results}")
    failed = any(not r.ok(r.ours) for r in rows) or (trial is not None and trial.run.exit_code)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
