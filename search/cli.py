"""The single ``mergesearch`` entry point.

Each subcommand lives in its own module under ``search/commands/`` and exposes
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; adding a command is adding a
module to ``COMMAND_MODULES``. Errors that users can fix (``MergeError`` subclasses and other
``*Error`` types with an ``exit_code``) become one line on stderr and exit 2 (bad input) or 1
(runtime failure); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMAND_MODULES = [
    "search.commands.merge",
    "search.commands.search",
    "search.commands.status",
    "search.commands.demo",
    "search.commands.dashboard",
    "search.commands.report",
    "search.commands.export",
    "search.commands.upload",
]


def _available_commands() -> list:
    modules = []
    for name in COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency inside the module: surface it
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergesearch",
        description="Search over LLM merge recipes, run one-off mergekit-style merges, ship the best.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _available_commands():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _user_error_exit_code(err: BaseException) -> int | None:
    """Exit code for errors meant for users, ``None`` for bugs (which keep their traceback)."""
    code = getattr(err, "exit_code", None)
    return code if isinstance(code, int) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("mergesearch: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        code = _user_error_exit_code(err)
        if code is None or args.debug:
            raise
        print(f"mergesearch {args.command}: error: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
