"""``mergesearch status RESULTS_OR_STORAGE``: every trial, the best, and held-out scores."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="results folder (results/<study>), study.db, journal file or storage URL"
    )
    parser.add_argument(
        "--study",
        "--study-name",
        dest="study_name",
        metavar="NAME",
        help="which study, when the storage holds several",
    )
    parser.add_argument("--last", type=int, default=None, help="only the last N trials")


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_trials(rows: list[dict], objectives: list[str]) -> str:
    head = ["#", "state", "what", *objectives, "value", "merge s", "eval s", "params / note"]
    body = []
    for r in rows:
        values = r["values"] or []
        body.append(
            [
                f"{r['number']}{'*' if r['best'] else ''}",
                r["state"],
                r["what"],
                *[_fmt(r["scores"].get(o)) for o in objectives],
                " ".join(_fmt(v) for v in values) or "-",
                _fmt(r["merge_seconds"], 2),
                _fmt(r["eval_seconds"], 2),
                r["note"] or r["params"],
            ]
        )
    widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *body]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mergesearch.search.distributed.locate import open_study
    from mergesearch.search.distributed.urls import hide_password
    from mergesearch.search.optimize.summary import (
        items_spent,
        objective_names,
        summarize,
        trials_table,
    )

    study, location = open_study(args.target, args.study_name)  # creates nothing
    name, url = study.study_name, hide_password(location.storage_url)
    rows = trials_table(study)
    if args.last:
        rows = rows[-args.last :]
    counts: dict[str, int] = {}
    for r in trials_table(study):
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    spent = items_spent(study.get_trials(deepcopy=False))
    states = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"study {name!r} in {url}: {states}; {spent:,} items evaluated")
    print(render_trials(rows, objective_names(study)))
    summary = summarize(study)
    if summary.rows:
        print()
        print(summary.render())
    return 0
