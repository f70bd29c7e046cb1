"""Resolve ``THUDM/cogvlm2-llama3-chat-19B``-style hub ids to a local checkpoint folder, as transformers does.

A local folder is returned as is. Anything else goes through ``huggingface_hub``: downloaded when online, taken
from the Hugging Face cache when offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``), with ``revision``,
``cache_dir`` and ``token`` honoured. Only the files a checkpoint needs are fetched (configs, safetensors
weights, tokenizer files); legacy ``.bin`` weights only when the repository has no safetensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_SMALL_FILES = ["*.json", "tokenizer.model", "*.tiktoken", "*.txt"]  # configs and tokenizer files
_WEIGHTS = ["*.safetensors"]
_LEGACY_WEIGHTS = ["pytorch_model*.bin"]
HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download")


class HubError(OSError):
    """A hub id that cannot be resolved to a local folder; the message names the repo and what to do."""


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` (or ``name``) that is not an existing local path."""
    if Path(name).expanduser().exists():
        return False
    parts = str(name).split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not str(name).startswith((".", "~"))


def pop_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the hub keywords out of a ``from_pretrained`` kwargs dict (``use_auth_token`` is the old ``token``)."""
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    if "use_auth_token" in kwargs:
        hub.setdefault("token", kwargs.pop("use_auth_token"))
    return hub


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    weights: bool = True,
) -> Path:
    """A local folder for ``name_or_path``: the folder itself, or the hub repo's snapshot in the HF cache.

    ``weights=False`` fetches configs and tokenizer files only (what a processor or tokenizer needs).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if not looks_like_hub_id(name):
        raise HubError(f"{name!r} is neither a local checkpoint folder nor a hub id like 'THUDM/cogvlm-chat-hf'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    common = {"revision": revision, "cache_dir": cache_dir, "local_files_only": offline, "token": token,
              "force_download": force_download, "library_name": "coglens"}
    try:
        folder = Path(snapshot_download(name, allow_patterns=_SMALL_FILES + (_WEIGHTS if weights else []), **common))
        if weights and not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
            folder = Path(snapshot_download(name, allow_patterns=_SMALL_FILES + _LEGACY_WEIGHTS, **common))
    except LocalEntryNotFoundError as exc:
        where = f" in {cache_dir}" if cache_dir else " in the Hugging Face cache"
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1" if offline else "no network"
        raise HubError(
            f"{name!r} is not a local folder, and as a hub id{f' at revision {revision!r}' if revision else ''} "
            f"it is not{where} and cannot be downloaded ({why}); download it once online (`hf download {name}`) "
            "or pass a checkpoint folder"
        ) from exc
    except GatedRepoError as exc:
        raise HubError(f"{name!r} is gated: accept its license on the hub and log in (`hf auth login`)") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{name!r} has no revision {revision!r}; pass an existing branch, tag or commit") from exc
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise HubError(f"{name!r} is not a model repository on the hub (nor a local folder): {exc}") from exc
    except OSError as exc:  # network failures
        raise HubError(
            f"cannot download {name!r} ({exc}); check the network, or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from exc
    return folder
