"""Merge speed and memory: ``mergesearch merge`` against mergekit 0.1.x, side by side.

Builds a float32 Llama family locally (``full``: ~425M parameters, 1.7 GB per model, 3 models:
a random base and two "fine-tunes" = base + small noise), measures the I/O floor (read the
inputs once, write one output once), then runs every method through both tools as fresh
processes and prints wall time, peak RSS (``wait4``'s ``ru_maxrss`` of the child), throughput,
the ratio to the I/O floor and the largest difference between the two outputs.

    python bench/merge_speed.py                                  # full size, every method
    python bench/merge_speed.py --size small --methods linear ties
    python bench/merge_speed.py --skip-mergekit
    MERGEKIT_VENV=/path/to/venv python bench/merge_speed.py       # else found or installed

Page cache: every run is warm, for both tools alike: the inputs it needs are read once right
before it, and pending writes are flushed (``sync``) first. ``--cold-floor`` also measures the
floor from a dropped page cache, where that is allowed. Peak RSS is taken from a small wrapper
process (see ``timed_run``). Results go to stdout and to ``bench/RESULTS_merge.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench._mergekit import TopKCut, compare_outputs, find_mergekit  # noqa: E402
from mergesearch.search.demo.family import build_tokenizer  # noqa: E402

GB = 1e9
SIZES: dict[str, dict[str, int]] = {
    # 28 x (4 x 1024^2 + 3 x 1024 x 2816) + 2 x 32000 x 1024 = 425.3M parameters, 1.70 GB fp32
    "full": {
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "intermediate_size": 2816,
        "vocab_size": 32000,
        "num_attention_heads": 16,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "intermediate_size": 704,
        "vocab_size": 4096,
        "num_attention_heads": 4,
    },
}
SHARD_BYTES = 500 * 2**20  # inputs come in shards like Hub checkpoints
N_MODELS = 3
TUTORIAL_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]
# Targets from the issue. "Linear family": the elementwise weighted sums.
# The seven methods mergekit 0.1.5 added: the target is "no slower than mergekit".
NEWER_METHODS = ("multislerp", "karcher", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl")
SPEEDUP_TARGET = {
    "ties": 10.0,
    "dare_ties": 10.0,
    "breadcrumbs": 10.0,
    "della": 10.0,
    **dict.fromkeys(NEWER_METHODS, 1.0),
}
DEFAULT_SPEEDUP_TARGET = 3.0
LINEAR_FAMILY = ("linear", "task_arithmetic")
FLOOR_TARGET = 2.0
RSS_TARGET = 1.5 * GB


# ---------------------------------------------------------------------------------------------
# The model family


def tensor_shapes(dims: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """Llama tensor names and shapes in checkpoint order."""
    h, i, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    shapes = [("model.embed_tokens.weight", (v, h))]
    for layer in range(dims["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
        shapes += [(p + f"mlp.{x}_proj.weight", (i, h)) for x in ("gate", "up")]
        shapes += [(p + "mlp.down_proj.weight", (h, i))]
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    return [*shapes, ("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def make_tensor(index: int, shape: tuple[int, ...], model: int, seed: int) -> torch.Tensor:
    """Tensor ``index`` of model ``model``: the base's, plus noise for the fine-tunes.

    The base is regenerated from its own seed, so no model has to be held in memory.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    is_norm = len(shape) == 1
    base = torch.ones(shape) if is_norm else torch.randn(shape, generator=gen).mul_(0.02)
    if model > 0:
        gen.manual_seed((seed * 1_000_003 + index) * 101 + model)
        base.add_(torch.randn(shape, generator=gen).mul_(0.05 if is_norm else 0.001))
    return base


def write_model(out: Path, dims: dict[str, int], model: int, seed: int) -> None:
    """One checkpoint in ~500 MB shards, generated shard by shard (memory: one shard)."""
    from transformers import LlamaConfig

    out.mkdir(parents=True, exist_ok=True)
    groups: list[list[tuple[int, str, tuple[int, ...]]]] = [[]]
    size = 0
    for index, (name, shape) in enumerate(tensor_shapes(dims)):
        nbytes = 4 * torch.Size(shape).numel()
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((index, name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: make_tensor(index, shape, model, seed) for index, name, shape in group}
        save_file(tensors, out / shard, metadata={"format": "pt"})
        total += sum(t.numel() * 4 for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, shard))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = LlamaConfig(**dims, num_key_value_heads=dims["num_attention_heads"], dtype="float32")
    config.architectures = ["LlamaForCausalLM"]  # mergekit picks its tensor layout by this
    config.tie_word_embeddings = False
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 0, 1, 2
    config.save_pretrained(out)
    build_tokenizer().save_pretrained(out)  # any tokenizer: both tools only copy it


def build_family(root: Path, size: str, seed: int = 0) -> list[Path]:
    """``root/size/model_{0,1,2}``, reused when a previous build with the same dims finished."""
    dims = SIZES[size]
    folder = root / size
    stamp = folder / "family.json"
    paths = [folder / f"model_{i}" for i in range(N_MODELS)]
    wanted = {"dims": dims, "seed": seed, "n_models": N_MODELS, "format": 2}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    for i, path in enumerate(paths):
        write_model(path, dims, i, seed)
    stamp.write_text(json.dumps(wanted))
    print(f"built {size} family in {time.perf_counter() - start:.0f} s under {folder}")
    return paths


def checkpoint_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# Method configs


def method_config(method: str, p: list[str], n_layers: int) -> dict[str, Any]:
    """One representative YAML per method on the family ``p`` (``p[0]`` is the base)."""
    half = {"weight": 0.5, "density": 0.5}
    per_method: dict[str, dict[str, Any]] = {
        "linear": {
            "models": [
                {"model": p[0], "parameters": {"weight": 0.4}},
                {"model": p[1], "parameters": {"weight": 0.3}},
                {"model": p[2], "parameters": {"weight": 0.3}},
            ]
        },
        "slerp": {
            "base_model": p[0],
            "models": [{"model": p[0]}, {"model": p[1]}],
            "parameters": {"t": TUTORIAL_T},
        },
        "task_arithmetic": {
            "base_model": p[0],
            "models": [{"model": m, "parameters": {"weight": 0.5}} for m in p[1:]],
        },
        "ties": {"base_model": p[0], "models": [{"model": m, "parameters": half} for m in p[1:]]},
        "dare_ties": {
            "base_model": p[0],
            "models": [{"model": m, "parameters": half} for m in p[1:]],
        },
        "breadcrumbs": {
            "base_model": p[0],
            "models": [
                {"model": m, "parameters": {"weight": 0.5, "density": 0.9, "gamma": 0.01}}
                for m in p[1:]
            ],
        },
        "della": {
            "base_model": p[0],
            "models": [{"model": m, "parameters": {**half, "epsilon": 0.1}} for m in p[1:]],
        },
        "model_stock": {"base_model": p[0], "models": [{"model": m} for m in p[1:]]},
        "multislerp": {
            "base_model": p[0],
            "models": [
                {"model": p[1], "parameters": {"weight": 0.6}},
                {"model": p[2], "parameters": {"weight": 0.4}},
            ],
        },
        "karcher": {"base_model": p[0], "models": [{"model": m} for m in p[1:]]},  # 3 inputs
        "sce": {
            "base_model": p[0],
            "models": [{"model": m} for m in p[1:]],
            "parameters": {"select_topk": 0.5},
        },
        "nearswap": {
            "base_model": p[0],
            "models": [{"model": p[0]}, {"model": p[1]}],
            "parameters": {"t": 0.001},
        },
        "arcee_fusion": {"base_model": p[0], "models": [{"model": p[0]}, {"model": p[1]}]},
        # epsilon at the fine-tunes' noise level: a mix of unique, shared and unchanged elements
        "ram": {
            "base_model": p[0],
            "models": [{"model": m} for m in p[1:]],
            "parameters": {"epsilon": 0.001},
        },
        "ramplus_tl": {
            "base_model": p[0],
            "models": [{"model": m} for m in p[1:]],
            "parameters": {"epsilon": 0.001, "r": 0.1, "alpha": 0.2},
        },
        "passthrough": {
            "slices": [
                {"sources": [{"model": p[1], "layer_range": [0, n_layers // 2]}]},
                {"sources": [{"model": p[2], "layer_range": [n_layers // 2, n_layers]}]},
            ]
        },
    }
    return {"merge_method": method, **per_method[method], "dtype": "float32"}


METHODS = [
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "breadcrumbs",
    "della",
    "model_stock",
    "passthrough",
    *NEWER_METHODS,
]
RANDOM_METHODS = ("dare_ties", "della")
CUTS = {
    "ties": TopKCut("magnitude", (0.5, 0.5)),
    "breadcrumbs": TopKCut("outliers", (0.9, 0.9), gamma=0.01),
    "sce": TopKCut("variance", (0.5,)),
}
# arcee_fusion: mergekit samples its threshold on tensors over 1e6 elements (ours is exact), so
# a few elements there take the other input; at most this fraction of them may
ARCEE_MAX_FLIPPED = 1e-3


def referenced_models(doc: dict[str, Any]) -> set[str]:
    found = {doc["base_model"]} if "base_model" in doc else set()
    found |= {m["model"] for m in doc.get("models", [])}
    found |= {s["model"] for sl in doc.get("slices", []) for s in sl["sources"]}
    return found


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Run:
    seconds: float
    peak_rss: int  # bytes
    exit_code: int
    cpu_seconds: float = 0.0  # user + system, the process and its children
    log_tail: str = ""
    load: float = 0.0  # 1-minute load average when the run started


# Runs the command in a fresh process and reports its rusage. The wrapper matters: Linux carries
# the RSS high-water mark of a process across exec, so a child forked straight from this (large)
# benchmark process would report our peak as its own; one forked from a small wrapper does not.
_WRAPPER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
report = {"seconds": time.perf_counter() - start, "code": os.waitstatus_to_exitcode(status),
          "maxrss_kib": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime}
with open(sys.argv[1], "w") as fh:
    json.dump(report, fh)
"""


def timed_run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> Run:
    """Run ``cmd`` as a fresh process: wall time, CPU time and peak RSS (children included)."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "rusage.json"
        log_path = Path(tmp) / "log.txt"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WRAPPER, str(report_path), *cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        tail = log_path.read_text(errors="replace")[-3000:]
        if not report_path.is_file():
            return Run(float("nan"), 0, proc.returncode or 1, 0.0, tail, load)
        report = json.loads(report_path.read_text())
    # Linux reports ru_maxrss in KiB.
    return Run(
        report["seconds"], report["maxrss_kib"] * 1024, report["code"], report["cpu"], tail, load
    )


def warm(paths: list[Path]) -> None:
    """Read files into the page cache and flush pending writes, so every run starts alike."""
    os.sync()
    buf = bytearray(64 * 2**20)
    view = memoryview(buf)
    for path in paths:
        for f in sorted(path.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass


@dataclass
class Floor:
    read_s_per_byte: float
    write_s_per_byte: float
    read_bytes: int
    write_bytes: int

    @property
    def seconds(self) -> float:
        return self.read_s_per_byte * self.read_bytes + self.write_s_per_byte * self.write_bytes

    def for_bytes(self, read_bytes: int, write_bytes: int) -> float:
        return self.read_s_per_byte * read_bytes + self.write_s_per_byte * write_bytes


def drop_page_cache() -> bool:
    """Flush and drop the page cache (needs root outside most containers); False if refused."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1")
    except OSError:
        return False
    return True


def measure_io_floor(
    inputs: list[Path], scratch: Path, repeats: int = 3, cold: bool = False
) -> Floor:
    """Best of ``repeats``: read every input shard once, write one model's bytes once.

    ``cold`` drops the page cache before each repeat (the caller checks it is allowed).
    """
    files = [f for p in inputs for f in sorted(p.glob("*.safetensors"))]
    read_bytes = sum(f.stat().st_size for f in files)
    write_bytes = checkpoint_bytes(inputs[0])
    buf = bytearray(64 * 2**20)
    view = memoryview(buf)
    best_read = best_write = float("inf")
    for _ in range(repeats):
        if cold:
            drop_page_cache()
        else:
            os.sync()
        start = time.perf_counter()
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass
        best_read = min(best_read, time.perf_counter() - start)
        target = scratch / "floor.bin"
        start = time.perf_counter()
        with open(target, "wb", buffering=0) as fh:
            left = write_bytes
            while left:
                left -= fh.write(view[: min(left, len(buf))])
        best_write = min(best_write, time.perf_counter() - start)
        target.unlink()
    return Floor(best_read / read_bytes, best_write / write_bytes, read_bytes, write_bytes)


# ---------------------------------------------------------------------------------------------
# The tools


def mergesearch_cmd(config: Path, out: Path, threads: int) -> list[str]:
    exe = Path(sys.executable).parent / "mergesearch"
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mergesearch"]
    return [*head, "merge", str(config), str(out), "--threads", str(threads), "--seed", "0",
            "--no-progress", "--overwrite"]  # fmt: skip


def mergekit_cmd(exe: Path, config: Path, out: Path, threads: int) -> list[str]:
    return [str(exe), str(config), str(out), "--copy-tokenizer", "--quiet",
            "--no-write-model-card", "--random-seed", "0", "-j", str(threads)]  # fmt: skip


def install_mergekit(venv: Path) -> Path:
    """mergekit 0.1.5 in its own venv, torch pinned to the project's CPU build."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO_ROOT / "constraints.txt")]
    subprocess.run([*pip, "torch==2.13.0", "mergekit==0.1.5"], check=True)
    print(f"installed mergekit into {venv} in {time.perf_counter() - start:.0f} s")
    return venv / "bin" / "mergekit-yaml"


def mergekit_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return env


# ---------------------------------------------------------------------------------------------
# One method, both tools


@dataclass
class Row:
    method: str
    ours: Run | None = None
    theirs: Run | None = None
    read_bytes: int = 0
    write_bytes: int = 0
    floor_s: float = 0.0
    diff: str = "-"
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        if self.ours and self.theirs and not self.ours.exit_code and not self.theirs.exit_code:
            return self.theirs.seconds / self.ours.seconds
        return None

    @property
    def cpu_speedup(self) -> float | None:
        if self.speedup is None or not self.ours or not self.theirs:
            return None
        return self.theirs.cpu_seconds / max(self.ours.cpu_seconds, 1e-9)

    def misses(self) -> list[str]:
        out = []
        if not self.ours or self.ours.exit_code:
            return ["ours failed"]
        target = SPEEDUP_TARGET.get(self.method, DEFAULT_SPEEDUP_TARGET)
        if self.speedup is not None and self.speedup < target:
            out.append(f"speed-up < {target:g}x")
        if self.method in LINEAR_FAMILY and self.ours.seconds > FLOOR_TARGET * self.floor_s:
            out.append(f"> {FLOOR_TARGET:g}x floor")
        if self.ours.peak_rss >= RSS_TARGET:
            out.append(f"RSS >= {RSS_TARGET / GB:g} GB")
        return out


def bench_method(
    method: str,
    family: list[Path],
    n_layers: int,
    work: Path,
    floor: Floor,
    threads: int,
    mergekit: Path | None,
    verify: bool,
) -> Row:
    doc = method_config(method, [str(p) for p in family], n_layers)
    config = work / f"{method}.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    needed = [Path(m) for m in sorted(referenced_models(doc))]
    row = Row(method)

    ours_out, ref_out = work / f"{method}-ours", work / f"{method}-mergekit"
    shutil.rmtree(ours_out, ignore_errors=True)
    warm(needed)
    row.ours = timed_run(mergesearch_cmd(config, ours_out, threads))
    if row.ours.exit_code:
        row.notes.append("ours: " + row.ours.log_tail.strip().splitlines()[-1])
        return row
    row.write_bytes = checkpoint_bytes(ours_out)
    # passthrough reads each output tensor once from one input; the others read whole inputs
    row.read_bytes = (
        row.write_bytes if method == "passthrough" else sum(checkpoint_bytes(p) for p in needed)
    )
    row.floor_s = floor.for_bytes(row.read_bytes, row.write_bytes)

    if mergekit is not None:
        shutil.rmtree(ref_out, ignore_errors=True)
        warm(needed)
        row.theirs = timed_run(mergekit_cmd(mergekit, config, ref_out, threads), mergekit_env())
        if row.theirs.exit_code:
            row.notes.append("mergekit: " + row.theirs.log_tail.strip().splitlines()[-1])
        elif verify and method in RANDOM_METHODS:
            row.diff = "random"
        elif verify:
            cut = CUTS.get(method)
            switched = (family[0], family[1]) if method == "arcee_fusion" else None
            result = compare_outputs(
                ours_out, ref_out, method, method, family, cut, switched, ARCEE_MAX_FLIPPED
            )
            result.layers_expected = n_layers
            row.diff = f"{result.max_abs_diff:.1e}" + (f" ({result.excluded} tied)" if cut else "")
            if switched:
                row.diff += f" ({result.flipped} of {result.sampled_elements} flipped)"
            row.notes += result.problems()
    shutil.rmtree(ours_out, ignore_errors=True)
    shutil.rmtree(ref_out, ignore_errors=True)
    return row


# ---------------------------------------------------------------------------------------------
# Report


def _gb(n: float) -> str:
    return f"{n / GB:.2f}"


def format_table(rows: list[Row]) -> str:
    lines = [
        "| method | ours s | mergekit s | speed-up | ours CPU s | mergekit CPU s | CPU speed-up "
        "| ours peak RSS GB | mergekit peak RSS GB | ours GB/s | ours x I/O floor | I/O floor s "
        "| max abs diff | load | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours_ok = r.ours is not None and not r.ours.exit_code
        theirs_ok = r.theirs is not None and not r.theirs.exit_code
        cells = [
            r.method,
            f"{r.ours.seconds:.1f}" if ours_ok else "FAILED",
            f"{r.theirs.seconds:.1f}" if theirs_ok else ("FAILED" if r.theirs else "-"),
            f"{r.speedup:.1f}x" if r.speedup else "-",
            f"{r.ours.cpu_seconds:.1f}" if ours_ok else "-",
            f"{r.theirs.cpu_seconds:.1f}" if theirs_ok else "-",
            f"{r.cpu_speedup:.1f}x" if r.cpu_speedup else "-",
            _gb(r.ours.peak_rss) if ours_ok else "-",
            _gb(r.theirs.peak_rss) if theirs_ok else "-",
            f"{(r.read_bytes + r.write_bytes) / GB / r.ours.seconds:.2f}" if ours_ok else "-",
            f"{r.ours.seconds / r.floor_s:.1f}" if ours_ok and r.floor_s else "-",
            f"{r.floor_s:.2f}" if r.floor_s else "-",
            r.diff,
            f"{r.ours.load:.1f}" if r.ours else "-",
            "; ".join(r.misses()) or "met",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_target(methods: list[str]) -> dict[float, list[str]]:
    groups: dict[float, list[str]] = {}
    for method in methods:
        groups.setdefault(SPEEDUP_TARGET.get(method, DEFAULT_SPEEDUP_TARGET), []).append(method)
    return groups


def machine_summary() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {mem / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--skip-mergekit", action="store_true", help="time mergesearch only")
    parser.add_argument("--no-verify", action="store_true", help="skip comparing the outputs")
    parser.add_argument(
        "--cold-floor",
        action="store_true",
        help="also measure the I/O floor from a dropped page cache (needs privileges; "
        "slows other jobs on the machine for a moment)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for both tools")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "out")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "RESULTS_merge.md")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run as a section at the end of the results file instead of replacing it",
    )
    args = parser.parse_args(argv)

    mergekit = None
    if not args.skip_mergekit:
        mergekit = find_mergekit() or install_mergekit(args.work / "mk-venv")
    args.work.mkdir(parents=True, exist_ok=True)
    family = build_family(args.work / "models", args.size)
    runs = args.work / "runs"
    runs.mkdir(exist_ok=True)

    cold_floor = None
    if args.cold_floor and drop_page_cache():
        cold_floor = measure_io_floor(family, runs, repeats=1, cold=True)
    warm(family)
    floor = measure_io_floor(family, runs)
    cache_note = "all runs warm (inputs read right before each run, pending writes synced)"
    if args.cold_floor and cold_floor is None:
        cache_note += "; the page cache cannot be dropped here, so no cold floor"
    load_before = os.getloadavg()
    floor_text = (
        f"read {_gb(floor.read_bytes)} GB + write {_gb(floor.write_bytes)} GB = "
        f"{floor.seconds:.2f} s warm ({1 / floor.read_s_per_byte / GB:.1f} GB/s read, "
        f"{1 / floor.write_s_per_byte / GB:.1f} GB/s write)"
    )
    if cold_floor is not None:
        floor_text += f", {cold_floor.seconds:.2f} s cold (page cache dropped)"
    print(f"{machine_summary()}; load {load_before[0]:.1f}; {cache_note}")
    print(f"I/O floor: {floor_text}\n")

    rows = []
    for method in args.methods:
        rows.append(
            bench_method(
                method,
                family,
                SIZES[args.size]["num_hidden_layers"],
                runs,
                floor,
                args.threads,
                mergekit,
                not args.no_verify,
            )
        )
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        for note in rows[-1].notes:
            print(f"    {note}")

    table = format_table(rows)
    print("\n" + table)
    command = "python bench/merge_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    targets = "; ".join(
        f"speed-up >= {target:g}x for {', '.join(names)}"
        for target, names in _by_target(args.methods).items()
    )
    title = (
        f"## Run: {', '.join(args.methods)}"
        if args.append
        else "# Merge benchmark: mergesearch vs mergekit 0.1.5"
    )
    report = f"""{title}

- Run: {dt.datetime.now().isoformat(timespec="minutes")}, `{command.strip()}`
- Machine: {machine_summary()}; 1-min load {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end (other jobs share the CPUs)
- Family: `{args.size}` Llama, {N_MODELS} float32 models of {_gb(checkpoint_bytes(family[0]))} GB, base + 2 noisy fine-tunes, 500 MB shards
- Threads: {args.threads} for both tools (mergesearch `--threads`: tensors computed in parallel, one single-threaded torch worker each; mergekit `-j`: torch's intra-op threads); {cache_note}
- I/O floor (all inputs read once + one output written once, no fsync): {floor_text}; "x I/O floor" uses the warm floor scaled to the bytes each method reads and writes
- GB/s = (bytes read + bytes written) / wall time; wall time, CPU time (user + system) and peak RSS are of the whole CLI process (imports included); CPU time is less sensitive than wall time to other jobs on the machine
- Targets: {targets}; linear and task_arithmetic within {FLOOR_TARGET:g}x of the floor; peak RSS < {RSS_TARGET / GB:g} GB
- max abs diff: ours vs mergekit, all tensors (ties/breadcrumbs/sce: elements tied at a top-k cut-off excluded; dare_ties/della draw random masks; arcee_fusion: on tensors over 1e6 elements mergekit samples its threshold, elements that took the other input are counted as flipped, at most {ARCEE_MAX_FLIPPED:g} of those tensors' elements)

{table}
"""
    notes = [f"- {r.method}: {n}" for r in rows for n in r.notes]
    if notes:
        report += "\nNotes:\n" + "\n".join(notes) + "\n"
    if args.append and args.results.is_file():
        report = args.results.read_text().rstrip("\n") + "\n\n" + report
    args.results.write_text(report)
    print(f"\nwritten to {args.results}")
    return 0 if all(r.ours and not r.ours.exit_code for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
