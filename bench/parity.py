"""Print how closely ``mergesearch merge`` reproduces mergekit 0.1.x, case by case.

Runs ``tests/merging/test_mergekit_parity.py`` (the cases are in ``tests/helpers/parity.py``:
tiny float32 checkpoints, one YAML, both tools, every tensor compared) through pytest and prints
what each case recorded in pytest's JUnit XML report. "excluded" counts the elements left out
because equal magnitudes straddle a top-k cut-off (ties, breadcrumbs, sce), or, for
arcee_fusion on tensors over 1e6 elements, because they took the other input than mergekit's
(mergekit samples its threshold there; "flipped" in the result column).

    python bench/parity.py                      # every case
    python bench/parity.py --cases ties slerp   # some
    python bench/parity.py --work DIR           # keep inputs and outputs in DIR/parity
    MERGEKIT_VENV=/path/to/venv python bench/parity.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench._mergekit import MERGEKIT_ENV, TOLERANCE, find_mergekit  # noqa: E402

TEST = "tests/merging/test_mergekit_parity.py"


def _row(case: ET.Element) -> tuple[str, bool]:
    """One table row from a ``<testcase>``, and whether the case passed."""
    name = case.get("name", "").partition("[")[2].rstrip("]")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    seconds = float(case.get("time", "0"))
    failure = case.find("failure")
    if failure is None:
        failure = case.find("error")
    skipped = case.find("skipped")
    if skipped is not None:
        return f"| {name} | - | - | - | - | {seconds:.1f} | skipped |", False
    verdict = "ok"
    if failure is not None:
        verdict = "FAIL: " + (failure.get("message") or "").splitlines()[0]
    if "method" not in props:  # failed before the comparison
        return f"| {name} | - | - | - | - | {seconds:.1f} | {verdict} |", False
    sampled = int(props["sampled_elements"])
    flipped = int(props["flipped"])
    if sampled:
        verdict += f" ({flipped} / {sampled} flipped)"
    excluded = int(props["excluded"]) + flipped
    return (
        f"| {name} | {props['method']} | {props['tensors']} | {props['max_abs_diff']} | "
        f"{excluded} / {props['elements']} | {seconds:.1f} | {verdict} |",
        failure is None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="case names (default: all)")
    parser.add_argument(
        "--work", type=Path, help="keep inputs and outputs in WORK/parity/ (replaced each run)"
    )
    args = parser.parse_args(argv)

    exe = find_mergekit()
    if exe is None:
        print(f"mergekit-yaml not found; set {MERGEKIT_ENV} to its venv", file=sys.stderr)
        return 2
    targets = [f"{TEST}::test_matches_mergekit[{c}]" for c in args.cases] if args.cases else [TEST]
    with tempfile.TemporaryDirectory(prefix="mergesearch-parity-") as tmp:
        report = Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
        cmd += ["-k", "test_matches_mergekit", f"--junitxml={report}", "-o", "junit_family=xunit1"]
        if args.work:  # pytest empties its basetemp first: a folder of our own inside WORK
            cmd.append(f"--basetemp={args.work / 'parity'}")
        print(f"mergekit: {exe}; tolerance {TOLERANCE:g}\n", flush=True)
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env={**os.environ, MERGEKIT_ENV: str(exe.parents[1])},
            text=True,
            capture_output=True,
        )
        cases = list(ET.parse(report).getroot().iter("testcase")) if report.is_file() else []
        if not cases:  # e.g. an unknown case name: pytest says which
            print(proc.stdout[-4000:] + proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode or 1
    print("| case | method | tensors | max abs diff | excluded (ties, flips) | s | result |")
    print("|---|---|---|---|---|---|---|")
    passed = 0
    for case in cases:
        row, ok = _row(case)
        passed += ok
        print(row)
    return 0 if passed == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
