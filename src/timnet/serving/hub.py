"""The Hugging Face Hub: a hub id (`owner/name`) downloaded to the hub cache, and an exported folder uploaded.

huggingface_hub is imported only when the Hub is used, so loading a local model never needs it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import TimnetError, require
from .folder_check import read_checked_card

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def is_hub_id(source: str | Path) -> bool:
    """`owner/name` that is not a local path."""
    return bool(HUB_ID.match(str(source))) and not Path(source).exists()


def download(repo_id: str) -> Path:
    """The model repo's snapshot folder (downloaded once, then read from the hub cache)."""
    snapshot_download = require("huggingface_hub", "export", "a model from the Hugging Face Hub").snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(repo_id), repo_type="model"))
    except Exception as err:  # offline, unknown repo, no access: the hub's errors differ by version
        raise TimnetError(
            f"{repo_id}: not a local folder, and the Hugging Face Hub gave {type(err).__name__}: {err}"
        ) from None


def push_to_hub(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub (creating the model repo); returns its URL."""
    HfApi = require("huggingface_hub", "export", "--push-to-hub").HfApi  # noqa: N806 (the library's class)

    folder = Path(folder)
    try:
        read_checked_card(folder)  # and nothing is uploaded that a loader would refuse
    except TimnetError:
        raise TimnetError(f"{folder}: not an exported timnet model folder — run `timnet export` first") from None
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return f"https://huggingface.co/{repo_id}"
