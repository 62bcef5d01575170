"""The command line reads alike everywhere: positional names, examples in every ``--help``, a
``--debug`` that says what it does, one meaning of ``--threads``, ``hf upload``'s flags."""

from __future__ import annotations

import argparse

import pytest

from mergesearch.search.cli import COMMANDS, build_parser, main

POSITIONALS = {"CONFIG", "OUT_DIR", "SPEC", "STUDY", "MODEL_DIR", "REPO_ID"}
READ_A_STUDY = ("status", "dashboard", "report", "export")


def _sub(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_help_ends_with_examples_of_that_command(command, capsys):
    text = _help(capsys, command)
    examples = text.split("examples:\n", 1)[1]
    lines = [line for line in examples.splitlines() if line.strip()]
    assert len(lines) >= 2 and all(f"mergesearch {command}" in line for line in lines[:1])


def test_the_main_help_has_examples(capsys):
    assert "examples:\n  mergesearch demo" in _help(capsys)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_positionals_use_one_vocabulary_and_debug_says_what_it_does(command):
    parser = _sub(command)
    positionals = [a.metavar for a in parser._actions if not a.option_strings and a.metavar]
    positionals = [p for p in positionals if p != "[build]"]
    assert set(positionals) <= POSITIONALS, positionals
    if command in READ_A_STUDY:
        assert positionals == ["STUDY"]
    debug = next(a for a in parser._actions if "--debug" in a.option_strings)
    assert debug.help and "traceback" in debug.help


@pytest.mark.parametrize("command", ["merge", "search", "export", "demo"])
def test_threads_means_cpu_threads_everywhere(command):
    threads = next(a for a in _sub(command)._actions if "--threads" in a.option_strings)
    assert threads.help.startswith("CPU threads to use")


def test_demo_build_reads_as_optional(capsys):
    usage = _help(capsys, "demo").split("\n\n")[0]
    assert "[build] ..." in usage and "{build}" not in usage


def test_upload_takes_hf_uploads_flags():
    options = {o for a in _sub("upload")._actions for o in a.option_strings}
    assert {"--commit-message", "--create-pr", "--include", "--exclude", "--revision"} <= options
