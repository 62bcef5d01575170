"""``mergesearch upload MODEL_DIR REPO_ID``: push an exported model to the Hugging Face Hub."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="exported model folder (e.g. results/<study>/best)")
    parser.add_argument("repo_id", help="OWNER/NAME of the model repository (created if missing)")
    parser.add_argument(
        "--private", action="store_true", help="create the repository private (when new)"
    )
    parser.add_argument(
        "--revision", help="branch to commit to (created if missing; default: main)"
    )
    parser.add_argument("--message", help="commit message")


def run(args: argparse.Namespace) -> int:
    from mergesearch.search.export.hub import upload_model

    result = upload_model(
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
    )
    print(f"uploaded {result.files} files to {result.repo_url}: {result.commit_url}")
    return 0
