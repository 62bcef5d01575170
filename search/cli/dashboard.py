"""``mergesearch dashboard STUDY``: optuna-dashboard on a study, read-only."""

from __future__ import annotations

import argparse

from mergesearch.search.distributed.locate import add_target_arguments, open_study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 exposes the study to the network)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: a free one)"
    )


def run(args: argparse.Namespace) -> int:
    from mergesearch.search.report import dashboard

    study, location = open_study(args.target, args.study)

    def ready(served: dashboard.Served) -> None:
        print(f"dashboard of study {study.study_name!r}: {served.url}", flush=True)
        print("read-only; each trial's merge config is attached; Ctrl+C stops it", flush=True)

    dashboard.serve(study, location, host=args.host, port=args.port, on_ready=ready)
    return 0
