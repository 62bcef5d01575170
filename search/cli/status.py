"""``mergesearch status RESULTS_OR_STORAGE``: every trial, the best, and held-out scores."""

from __future__ import annotations

import argparse

NAME = "status"
HELP = "show a study's trials: state, parameters, scores, timings, best so far"


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
    import optuna

    from mergesearch.search.distributed.storage import open_storage, pick_study_name, resolve_target
    from mergesearch.search.optimize.summary import objective_names, summarize, trials_table

    url = resolve_target(args.target)
    storage = open_storage(url)
    name = pick_study_name(storage, url, args.study_name)
    study = optuna.load_study(study_name=name, storage=storage)
    rows = trials_table(study)
    if args.last:
        rows = rows[-args.last :]
    counts: dict[str, int] = {}
    for r in trials_table(study):
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(f"study {name!r} in {url}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    print(render_trials(rows, objective_names(study)))
    summary = summarize(study)
    if summary.rows:
        print()
        print(summary.render())
    return 0
