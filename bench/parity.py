"""Print how closely ``mergesearch merge`` reproduces mergekit 0.1.x, case by case.

The same cases as ``tests/merging/test_mergekit_parity.py`` (see ``tests/helpers/parity.py``):
tiny float32 checkpoints, one YAML, both tools, every tensor compared. "excluded" counts the
elements left out because equal magnitudes straddle a top-k cut-off (ties, breadcrumbs).

    python bench/parity.py                      # every case
    python bench/parity.py --cases ties slerp   # some
    MERGEKIT_VENV=/path/to/venv python bench/parity.py
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.parity import (
    CASES,
    CASES_BY_NAME,
    MERGEKIT_ENV,
    TOLERANCE,
    Comparison,
    find_mergekit,
    run_case,
)


def _row(result: Comparison | None, case: str, method: str, seconds: float, error: str) -> str:
    if result is None:
        return f"| {case} | {method} | - | - | - | - | ERROR: {error} |"
    verdict = "ok" if result.ok else "FAIL: " + "; ".join(result.problems())
    return (
        f"| {case} | {method} | {result.tensors} | {result.max_abs_diff:.2e} | "
        f"{result.excluded} / {result.elements} | {seconds:.1f} | {verdict} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES_BY_NAME), metavar="CASE")
    parser.add_argument("--work", type=Path, help="keep inputs and outputs here (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    exe = find_mergekit()
    if exe is None:
        print(f"mergekit-yaml not found; set {MERGEKIT_ENV} to its venv", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="mergesearch-parity-"))
    cases = [CASES_BY_NAME[name] for name in args.cases] if args.cases else CASES

    print(f"mergekit: {exe}; tolerance {TOLERANCE:g}; work dir {work}\n")
    print("| case | method | tensors | max abs diff | excluded (top-k ties) | s | result |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    for case in cases:
        start = time.perf_counter()
        try:
            result, error = run_case(case, work, exe), ""
        except Exception as err:  # report and go on with the next case
            result, error = None, str(err).splitlines()[0] if str(err) else repr(err)
        failures += result is None or not result.ok
        print(_row(result, case.name, case.method, time.perf_counter() - start, error), flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
