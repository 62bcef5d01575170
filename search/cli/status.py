"""``mergesearch status STUDY``: every trial, the best, and held-out scores.

``--trial N`` shows one trial whole (parameters, scores per split, config); ``--format json``
and ``--format csv`` print the trials for other programs (as ``optuna trials -f json`` does),
nothing else. The table fits the terminal: the parameters column takes the width the other
columns leave, and is cut only when the terminal is too narrow for it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
from typing import Any

from mergesearch.search.distributed.locate import add_target_arguments

FORMATS = ("table", "json", "csv")
MIN_PARAMS_WIDTH = 24  # below this the last column is not worth cutting further


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--trial", type=int, metavar="N", help="show trial N in full")
    parser.add_argument(
        "--last", type=int, default=None, metavar="N", help="only the last N trials"
    )
    parser.add_argument(
        "-f",
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default), or json / csv for other programs: the trials only",
    )


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def terminal_width() -> int | None:
    """The terminal's width; ``None`` when the output goes to a file or a pipe (and ``COLUMNS``
    is not set): then nothing is cut, as ``git log | less`` cuts nothing."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _value(row: dict) -> str:
    """ "weighted" (the weighted sum), or a study's raw values when it names no objectives (a
    study made outside mergesearch)."""
    if row["weighted"] is not None:
        return _fmt(row["weighted"])
    return " ".join(_fmt(v) for v in row["values"] or []) or "-"


def render_trials(
    rows: list[dict],
    objectives: list[str],
    *,
    value_head: str = "value",
    width: int | None = None,
) -> str:
    """The trials as a table ``width`` characters wide at most (``None``: no limit)."""
    head = ["#", "state", "what", *objectives, value_head, "merge s", "eval s", "params / note"]
    body = []
    for r in rows:
        body.append(
            [
                f"{r['number']}{'*' if r['best'] else ''}",
                r["state"],
                r["what"],
                *[_fmt(r["scores"].get(o)) for o in objectives],
                _value(r),
                _fmt(r["merge_seconds"], 2),
                _fmt(r["eval_seconds"], 2),
                r["note"] or r["params"],
            ]
        )
    widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head) - 1)]
    room = max(width - sum(widths) - 2 * len(widths), MIN_PARAMS_WIDTH) if width else float("inf")
    lines = []
    for row in [head, *body]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        last = str(row[-1])
        last = last if len(last) <= room else last[: int(room) - 1] + "…"
        lines.append("  ".join([*cells, last]).rstrip())
    return "\n".join(lines)


def _trial_record(study: Any, row: dict, *, full: bool) -> dict[str, Any]:
    """One trial as plain data: the row of the table, with scores per split; ``full`` adds
    the merge config and timestamps."""
    from mergesearch.search import attrs as A
    from mergesearch.search.optimize import trials as T

    trial = study.get_trials(deepcopy=False)[row["number"]]
    record = {
        "number": row["number"],
        "state": row["state"],
        "what": row["what"],
        "baseline": trial.user_attrs.get(A.BASELINE),
        "params": row["param_values"],
        "values": row["values"],
        "weighted": row["weighted"],
        "scores": T.scores(study, trial),
        "merge_seconds": row["merge_seconds"],
        "eval_seconds": row["eval_seconds"],
        "items": row["items"],
        "note": row["note"] or None,
        "best": row["best"],
        "spec_version": row["spec_version"],
    }
    if full:
        record["datetime_start"] = _iso(trial.datetime_start)
        record["datetime_complete"] = _iso(trial.datetime_complete)
        record["merge_config"] = trial.user_attrs.get(A.MERGE_CONFIG)
    return record


def _iso(when: Any) -> str | None:
    return when.isoformat(timespec="seconds") if when is not None else None


def _csv(records: list[dict[str, Any]], objectives: list[str]) -> str:
    splits = sorted({s for r in records for s in r["scores"]}, key=lambda s: (s != "search", s))
    head = ["number", "state", "what", "weighted"]
    head += [f"{o} ({split})" for split in splits for o in objectives]
    head += ["merge_seconds", "eval_seconds", "items", "best", "spec_version", "params", "note"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    for r in records:
        scores = [r["scores"].get(split, {}).get(o) for split in splits for o in objectives]
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        first = [r["number"], r["state"], r["what"], r["weighted"]]
        timing = [r["merge_seconds"], r["eval_seconds"], r["items"]]
        last = [r["best"], r["spec_version"], params, r["note"] or ""]
        writer.writerow([*first, *scores, *timing, *last])
    return out.getvalue().rstrip("\n")


def _one_trial(study: Any, row: dict, objectives: list[str]) -> str:
    record = _trial_record(study, row, full=True)
    lines = [
        f"trial {record['number']}{' (best)' if record['best'] else ''}: {record['state']}, "
        f"{record['what']}",
    ]
    if record["note"]:
        lines.append(f"note: {record['note']}")
    lines.append(f"weighted: {_fmt(record['weighted'])}")
    for split, values in sorted(record["scores"].items(), key=lambda kv: kv[0] != "search"):
        shown = ", ".join(f"{o} {_fmt(values.get(o))}" for o in objectives if o in values)
        if shown:
            lines.append(f"{split}: {shown}")
    timing = f"merge {_fmt(record['merge_seconds'], 2)} s, eval {_fmt(record['eval_seconds'], 2)} s"
    lines.append(f"{timing}, {record['items'] or 0} items; spec version {record['spec_version']}")
    if record["params"]:
        lines.append("parameters:")
        lines += [f"  {k} = {_fmt(v, 6)}" for k, v in record["params"].items()]
    if record["merge_config"]:
        lines += ["merge config:", *(f"  {line}" for line in record["merge_config"].splitlines())]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mergesearch.search.distributed.budget import items_spent
    from mergesearch.search.distributed.locate import open_study
    from mergesearch.search.distributed.urls import hide_password
    from mergesearch.search.errors import SpecError
    from mergesearch.search.optimize.summary import objective_names, summarize, trials_table

    study, location = open_study(args.target, args.study)  # creates nothing
    objectives = objective_names(study)
    every = trials_table(study)
    if args.trial is not None:
        found = [r for r in every if r["number"] == args.trial]
        if not found:
            known = f"trials are 0..{len(every) - 1}" if every else "it has no trials"
            raise SpecError(
                f"--trial {args.trial}: study {study.study_name!r} has no such trial ({known})"
            )
        if args.format == "json":
            print(json.dumps(_trial_record(study, found[0], full=True), indent=2))
        elif args.format == "csv":
            print(_csv([_trial_record(study, found[0], full=False)], objectives))
        else:
            print(_one_trial(study, found[0], objectives))
        return 0
    rows = every[-args.last :] if args.last else every
    if args.format == "json":
        print(json.dumps([_trial_record(study, r, full=False) for r in rows], indent=2))
        return 0
    if args.format == "csv":
        print(_csv([_trial_record(study, r, full=False) for r in rows], objectives))
        return 0
    counts: dict[str, int] = {}
    for r in every:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    spent = items_spent(study.get_trials(deepcopy=False))
    states = ", ".join(f"{n} {s}" for s, n in counts.items())
    name, url = study.study_name, hide_password(location.storage_url)
    print(f"study {name!r} in {url}: {states}; {spent:,} items evaluated")
    value_head = "weighted" if len(objectives) > 1 else "value"
    print(render_trials(rows, objectives, value_head=value_head, width=terminal_width()))
    summary = summarize(study)
    if summary.rows:
        print()
        print(summary.render())
    return 0
