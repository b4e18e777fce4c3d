"""Hugging Face Hub IDs as MODEL (`org/name[@revision]`) or data (`org/name[:split]`), fetched into the user's cache.

Users pass Hub IDs to every tool they know; the stages read local folders, so an ID is downloaded (or found in
the cache) with `huggingface_hub.snapshot_download` and its snapshot folder is used as the local MODEL. Only
what the stages read is fetched: config, tokenizer and safetensors weights — never pickled `.bin` weights nor
remote code (a model that needs `--trust-remote-code` must be passed as a local folder).

The user's settings decide what happens: HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE, HF_TOKEN (or `hf auth login`);
sqft-ov never switches offline mode on or off. An ID that cannot be had is one SqftError that names the fix.
A string that reads as a path (`./x`, `/x`, `~/x`, `a/b/c`, `x.gguf`, a data file name, or whose first
folder exists) is never taken for an ID: it keeps the "does not exist" error.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqft_ov.errors import ModelFolderError, SqftError

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL_ID = re.compile(rf"({_NAME}/{_NAME})(?:@([A-Za-z0-9._/-]+))?")
_DATASET_ID = re.compile(rf"({_NAME}/{_NAME})(?::([A-Za-z0-9._+%\[\]:-]+))?")
_PATH_SUFFIXES = (".gguf", ".txt", ".json", ".jsonl", ".csv", ".parquet")
# What the stages read of a model repository (fnmatch patterns: `*` also matches `/`, so weights are named).
MODEL_FILES = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
               "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
               "chat_template.json", "*.tiktoken")


def _hub_ref(text: str | Path, pattern: re.Pattern) -> tuple[str, str | None] | None:
    """(repo, revision or split) when `text` reads as a Hub ID rather than a local path, else None."""
    text = str(text)
    match = pattern.fullmatch(text)
    if match is None or text.lower().endswith(_PATH_SUFFIXES):
        return None
    if Path(text).exists() or Path(text.split("/")[0]).exists():  # partly there: a mistyped local path
        return None
    return match.group(1), match.group(2)


def is_hub_model(text: str | Path) -> bool:
    return _hub_ref(text, _MODEL_ID) is not None


def is_hub_dataset(text: str | Path) -> bool:
    return _hub_ref(text, _DATASET_ID) is not None


def _why(exc: Exception, repo: str, revision: str | None) -> str:
    """The reason a Hub fetch failed, in words a user can act on."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(exc, GatedRepoError):
        return f"it is gated: accept its conditions on https://huggingface.co/{repo}, then log in (hf auth login)"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repository, or it is private: check the name, or log in (hf auth login or HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return f"it has no revision {revision!r}"
    if isinstance(exc, HFValidationError):
        return "not a valid repository ID"
    if isinstance(exc, (LocalEntryNotFoundError, ConnectionError)):  # datasets: ConnectionError
        return ("offline: HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "no network, or the Hub is unreachable") \
            + ", and it is not in the Hugging Face cache"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def download_model(text: str | Path) -> Path:
    """The local snapshot folder of Hub model `org/name[@revision]`: config, tokenizer and safetensors only."""
    from huggingface_hub import snapshot_download

    repo, revision = _hub_ref(text, _MODEL_ID) or (str(text), None)
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=list(MODEL_FILES)))
    except Exception as exc:  # huggingface_hub raises HTTP, OS and validation errors alike
        raise ModelFolderError(f"model {text} is not a local folder and could not be downloaded from the Hugging Face "
                               f"Hub ({_why(exc, repo, revision)}): download it first with `hf download {repo} "
                               "--local-dir DIR` and pass DIR, or pass a local folder or .gguf file") from exc
    if not any(folder.glob("model*.safetensors")):
        raise ModelFolderError(f"Hub model {text} has no safetensors weights (model*.safetensors): sqft-ov never loads "
                               "pickled .bin weights; choose a repository with safetensors, or convert it "
                               "(save_pretrained(safe_serialization=True)) and pass the folder")
    return folder


def load_hub_dataset(text: str | Path):
    """Hub dataset `org/name[:split]` (default split: train) as a `datasets.Dataset`."""
    import datasets

    repo, split = _hub_ref(text, _DATASET_ID) or (str(text), None)
    try:
        return datasets.load_dataset(repo, split=split or "train")
    except Exception as exc:  # datasets raises connection, file and value errors alike
        raise SqftError(f"data {text} is not a local file and could not be loaded from the Hugging Face Hub "
                        f"({_why(exc, repo, None)}): download it first with `hf download {repo} --repo-type dataset "
                        "--local-dir DIR` and pass a data file from DIR, or pass a local .txt/.json/.jsonl/.csv/"
                        ".parquet file") from exc
