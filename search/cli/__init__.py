"""The single ``mergesearch`` entry point.

Each subcommand lives in its own module under ``search/cli/`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; adding a command is adding its module to
``COMMANDS``. Only the chosen command's module is imported: the others pull in Optuna,
SQLAlchemy or transformers, seconds of imports that a ``mergesearch merge`` never uses, and
``--help`` lists every command from the table alone. Errors meant for users (``MergeError``
and its subclasses in every package) become one line on stderr and exit 2 for bad input
(``ConfigError``) or 1 for a runtime failure; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from mergesearch import VERBOSE_ENV, __version__
from mergesearch.search.cli.examples import EXAMPLES
from mergesearch.search.cli.examples import MAIN as MAIN_EXAMPLES
from mergesearch.search.cli.extras import missing_extra
from mergesearch.search.cli.output import closed_output, hidden_passwords, hide_passwords

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "merge": (
        "mergesearch.search.cli.merge",
        "run one merge from a mergekit-style YAML into a Hugging Face model folder",
    ),
    "search": (
        "mergesearch.search.cli.search",
        "run (or resume) an evolutionary/Bayesian search over merge recipes",
    ),
    "status": (
        "mergesearch.search.cli.status",
        "show a study's trials: state, parameters, scores, timings, best so far",
    ),
    "demo": (
        "mergesearch.search.cli.demo",
        "build the tiny demo models if missing and run the demo search end to end",
    ),
    "dashboard": (
        "mergesearch.search.cli.dashboard",
        "serve optuna-dashboard on a study, each trial's merge config attached (127.0.0.1)",
    ),
    "report": (
        "mergesearch.search.cli.report",
        "write report.html (self-contained, offline) and PNG plots of a study",
    ),
    "export": (
        "mergesearch.search.cli.export",
        "rebuild a trial's merged model (default: the best) with its mergekit YAML and model card",
    ),
    "upload": (
        "mergesearch.search.cli.upload",
        "upload a model folder to the Hugging Face Hub (token from HF_TOKEN or the login cache)",
    ),
}


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if known."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed and ``command``'s arguments (its module imported)."""
    parser = argparse.ArgumentParser(
        prog="mergesearch",
        description="Search over LLM merge recipes, run one-off mergekit-style merges, ship the best.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of its one-line message",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="let third-party libraries print their progress bars and notices",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # accepted after the command too (``mergesearch merge ... --debug``)
        sub_parser.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the full traceback of an error instead of its one-line message",
        )
        sub_parser.add_argument(
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="let third-party libraries print their progress bars and notices",
        )
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def user_error_exit_code(err: BaseException) -> int | None:
    """2 for bad input, 1 for a runtime failure, ``None`` for bugs (they keep their traceback).

    Imported here, not at the top: ``--help`` should not pay for loading torch.
    """
    from mergesearch.merging.errors import ConfigError, MergeError

    if isinstance(err, ConfigError):
        return 2
    return 1 if isinstance(err, MergeError) else None


def report_error(err: Exception, command: str | None, *, debug: bool) -> int | None:
    """Print ``err`` as one line on stderr and return the exit code: 2 for a missing extra or
    bad input, 1 for a runtime failure. ``None`` (nothing printed) when the caller must
    re-raise instead: a bug, or any error under ``--debug``."""
    if isinstance(err, ModuleNotFoundError):
        message, code = missing_extra(err), 2
    else:
        # a storage URL in a message from any library: never its password
        message, code = hide_passwords(str(err)), user_error_exit_code(err)
    if message is None or code is None or debug:
        return None
    print(f"mergesearch {command}: error: {message}", file=sys.stderr)
    return code


# what running the same command again does after Ctrl-C: a study keeps its finished trials;
# other outputs appear only when complete, so there is nothing to pick up
RESUME_HINTS = {"search": "resume the study", "demo": "resume the demo"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as err:  # the command's module needs an extra not installed
        code = report_error(err, command, debug="--debug" in argv)
        if code is None:
            raise
        return code
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by the evaluators' process settings
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(hidden_passwords)
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, not at Python's exit
        return code
    except BrokenPipeError:
        return closed_output()
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command, "start over (nothing half-written was kept)")
        print(
            f"mergesearch: interrupted; run the same command again to {hint}",
            file=sys.stderr,
        )
        return 130
    except Exception as err:
        code = report_error(err, args.command, debug=args.debug)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
