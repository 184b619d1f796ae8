"""The Hugging Face hub, where ropestretch reaches it at all: what looks like a hub id, whether the
hub can be reached (one clear line offline), and fetching a config or a model snapshot. Both the
config reader and the model loader use it; it uses neither."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ropestretch.errors import UsageError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` that is not a path a user meant as a file."""
    looks_like_path = text.endswith(".json") or text.startswith((".", "/", "~")) or os.sep + os.sep in text
    return bool(_HUB_ID.match(text)) and not looks_like_path


def check_hub_reachable(model_id: str) -> None:
    """One clear UsageError when the hub cannot be reached (offline, HF_HUB_OFFLINE)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.getaddrinfo(host, 443)
    except OSError as err:
        raise UsageError(
            f"cannot reach the model hub for {model_id!r} ({err}); pass a local model folder, config.json or .gguf file"
        ) from None


def download_config(model_id: str) -> str:
    """``config.json`` of a hub model: from the local cache, else from the hub when it is reachable."""
    import logging

    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(model_id, "config.json", local_files_only=True)
    except Exception:
        pass
    check_hub_reachable(model_id)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        return hf_hub_download(model_id, "config.json")
    except Exception as err:  # unknown, gated or private repo, network failure: one message
        reason = type(err).__name__
        raise UsageError(f"could not fetch config.json of hub model {model_id!r} ({reason})") from None


def snapshot(model_id: str, patterns: list[str]) -> Path:
    """A hub model's files matching ``patterns``: the local hub cache first, else a download when
    the hub is reachable."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    check_hub_reachable(model_id)
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as err:  # unknown, gated or private repo, network failure: one message
        raise UsageError(f"could not fetch hub model {model_id!r} ({type(err).__name__})") from None
