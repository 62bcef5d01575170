"""``mergesearch merge CONFIG.yaml OUT_DIR``: one merge from a mergekit-style YAML."""

from __future__ import annotations

import argparse
import dataclasses
import time

from mergesearch.merging import Merger, load_merge_config
from mergesearch.merging.config import DTYPES
from mergesearch.merging.engine import DEFAULT_SHARD_SIZE
from mergesearch.search.cli.checks import add_merge_threads, at_least_one


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG", help="mergekit-style YAML (models: or slices: form)"
    )
    parser.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="output folder: the model, mergekit_config.yml and README.md, created atomically",
    )
    parser.add_argument(
        "--out-shard-size",
        default=DEFAULT_SHARD_SIZE,
        help="largest shard in bytes, with k/M/G suffixes (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, help="compute and output dtype (overrides the YAML)"
    )
    parser.add_argument(
        "--seed", type=int, help="seed of DARE/DELLA masks (default: YAML seed or 0)"
    )
    parser.add_argument(
        "--copy-tokenizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy the tokenizer of the base (or tokenizer_source) model (default: on)",
    )
    add_merge_threads(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also read pytorch_model*.bin checkpoints (with weights_only=True)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Merge with the library's policy (``Merger.merge_to_disk``: a NaN/inf result or a damaged
    source is refused); errors reach the user through the entry point's one-line format."""
    at_least_one("--threads", args.threads)
    start = time.perf_counter()  # the merge's own time: the interpreter's start is not in it
    config = load_merge_config(args.config)
    if args.dtype:
        config = dataclasses.replace(config, dtype=args.dtype, out_dtype=args.dtype)
    merger = Merger(cache_bytes=0, allow_pickle=args.allow_pickle, threads=args.threads)
    out = merger.merge_to_disk(
        config,
        args.out_dir,
        seed=args.seed,
        shard_size=args.out_shard_size,
        copy_tokenizer=args.copy_tokenizer,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    plan = merger.plan(config)
    seconds = time.perf_counter() - start
    print(f"merged {len(plan.jobs)} tensors ({plan.method.name}) into {out} in {seconds:.1f} s")
    return 0
