"""Checks of command-line values that argparse's types cannot word well.

An argparse ``type=`` failure prints the usage block and a second line; these raise a
``ConfigError`` instead, so a bad flag reads like every other bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse

from mergesearch.merging.errors import ConfigError


def at_least_one(flag: str, value: int | None) -> None:
    """``--threads 0`` would reach ``torch.set_num_threads`` and fail with a traceback."""
    if value is not None and value < 1:
        raise ConfigError(f"{flag} {value}: must be 1 or more")


def add_merge_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads`` of the commands that write a merge to disk (one tensor per thread)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads to use, one tensor each (default: all cores)",
    )
