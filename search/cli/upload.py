"""``mergesearch upload MODEL_DIR REPO_ID``: push an exported model to the Hugging Face Hub.

The flags follow ``hf upload``'s: ``--commit-message``, ``--create-pr``, ``--include`` and
``--exclude`` (glob patterns, repeatable), ``--revision``, ``--private``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="exported model folder (e.g. results/<study>/best)"
    )
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="OWNER/NAME of the model repository (created if missing)"
    )
    parser.add_argument(
        "--private", action="store_true", help="create the repository private (when new)"
    )
    parser.add_argument(
        "--revision", help="branch to commit to (created if missing; default: main)"
    )
    parser.add_argument(
        "--commit-message",
        "--message",
        dest="commit_message",
        metavar="TEXT",
        help="summary of the commit (default: 'Upload MODEL_DIR with mergesearch')",
    )
    parser.add_argument(
        "--create-pr",
        action="store_true",
        help="open a pull request with the files instead of committing to main",
    )
    parser.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="upload only the files matching this glob (repeatable), e.g. '*.safetensors'",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="leave out the files matching this glob (repeatable), e.g. 'extra/*'",
    )


def run(args: argparse.Namespace) -> int:
    from mergesearch.search.export.hub import upload_model

    result = upload_model(
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        include=args.include,
        exclude=args.exclude,
    )
    print(f"uploaded {result.files} files to {result.repo_url}: {result.commit_url}")
    if result.pr_url:
        print(f"pull request: {result.pr_url}")
    return 0
