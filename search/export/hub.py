"""Push a model folder to the Hugging Face Hub: ``create_repo(exist_ok=True)`` + ``upload_folder``.

The token comes from ``HF_TOKEN`` or the login cache (``huggingface_hub.get_token``) and goes only
into the client's request headers: it is never printed, logged or written, and it is scrubbed
from error messages. The endpoint is the client's (``HF_ENDPOINT``, default huggingface.co).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mergesearch.merging.atomic import TEMP_MARK
from mergesearch.merging.errors import ConfigError, MergeRuntimeError


@dataclass(frozen=True)
class UploadResult:
    repo_url: str
    commit_url: str
    files: int
    pr_url: str | None = None  # with ``create_pr``: the pull request opened


def selected(
    folder: Path, files: list[Path], include: list[str] | None, exclude: list[str] | None
) -> list[Path]:
    """The files ``upload_folder`` sends with these patterns (its own filter, so the count
    printed is the count sent); ``ConfigError`` when the patterns leave nothing."""
    from huggingface_hub.utils import filter_repo_objects

    picked = list(
        filter_repo_objects(
            files,
            allow_patterns=include or None,
            ignore_patterns=exclude or None,
            key=lambda p: p.relative_to(folder).as_posix(),
        )
    )
    if not picked:
        raise ConfigError(
            f"{folder}: --include/--exclude leave no file to upload "
            f"(include {include or 'all'}, exclude {exclude or 'none'})"
        )
    return picked


def check_model_dir(folder: Path) -> list[Path]:
    """The files to upload; ``ConfigError`` unless ``folder`` is a complete model folder."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such model folder; export one with `mergesearch export`")
    if TEMP_MARK in folder.name:
        raise ConfigError(f"{folder}: an unfinished export (temporary folder); export again")
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"{folder}: not a model folder (needs config.json and *.safetensors); "
            "export one with `mergesearch export`"
        )
    return sorted(p for p in folder.rglob("*") if p.is_file())


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"REPO_ID {repo_id!r}: {str(err).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise ConfigError(f"REPO_ID {repo_id!r}: give OWNER/NAME (your user or organisation name)")


def _token() -> str:
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise ConfigError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the Hub cannot be reached; unset "
            "it to upload"
        )
    token = get_token()
    if not token:
        raise ConfigError("no Hugging Face token: set HF_TOKEN or log in once with `hf auth login`")
    return token


def upload_model(
    model_dir: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> UploadResult:
    """``create_pr`` opens a pull request instead of committing to the branch; ``include`` and
    ``exclude`` are glob patterns over the folder's paths, as ``hf upload`` takes them."""
    import httpx2  # huggingface_hub's HTTP client: its errors are what a dead network raises
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(model_dir)
    files = selected(folder, check_model_dir(folder), include, exclude)
    check_repo_id(repo_id)
    if create_pr and revision and revision != "main":
        raise ConfigError(
            f"--create-pr opens a pull request against main; drop --revision {revision}"
        )
    token = _token()
    api = HfApi(token=token)
    # one INFO line per HTTP request is noise on a command line (URLs only, never the token)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        repo = api.create_repo(
            repo_id, private=True if private else None, exist_ok=True, repo_type="model"
        )
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with mergesearch",
            create_pr=create_pr or None,
            allow_patterns=include or None,
            ignore_patterns=exclude or None,
        )
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if isinstance(err, httpx2.TransportError):  # no answer at all: network, proxy, endpoint
            first = f"cannot reach the Hub ({first}); check the network and HF_ENDPOINT"
        raise MergeRuntimeError(
            f"upload of {folder} to {repo_id} at {api.endpoint} failed: "
            f"{first.replace(token, '***')}"
        ) from None
    return UploadResult(str(repo), info.commit_url, len(files), info.pr_url)
