"""The RoPE geometry of a model, read from its Hugging Face ``config.json``.

Reads both layouts: transformers 5.x (``rope_parameters`` holding ``rope_theta``) and
transformers 4.x (top-level ``rope_theta`` and an optional ``rope_scaling``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ropestretch.errors import UsageError

# Families that use RoPE even when an old config.json does not spell out rope_theta.
_ROPE_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
    "phi3", "phi", "stablelm", "starcoder2", "internlm2", "deepseek", "olmo", "olmo2", "cohere",
    "granite", "gpt_neox", "gptj", "persimmon", "falcon", "baichuan", "yi", "chatglm",
}
_DEFAULT_THETA = 10000.0


@dataclass(frozen=True)
class RopeConfig:
    """What RoPE looks like in a pre-trained model.

    Attributes:
        window: the pre-trained context window ``N`` (``max_position_embeddings``).
        base: the RoPE base ``b0`` (``rope_theta``).
        head_dim: the attention head dimension.
        partial_rotary_factor: the fraction of ``head_dim`` that is rotated.
        model_type: the config's ``model_type``, for messages.
    """

    window: int
    base: float
    head_dim: int
    partial_rotary_factor: float = 1.0
    model_type: str = ""

    @property
    def rotary_dim(self) -> int:
        """Dimensions that are rotated: ``int(head_dim * partial_rotary_factor)``, as transformers does."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def pairs(self) -> int:
        """Number of rotary pairs ``d/2``, one frequency each."""
        return self.rotary_dim // 2


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite: what every numeric RoPE setting must be."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise UsageError(f"config field {what} must be a positive integer, got {value!r}")
    return int(value)


def rope_config_from_dict(config: Mapping[str, Any]) -> RopeConfig:
    """Build a :class:`RopeConfig` from a config dict in the transformers 4.x or 5.x layout.

    Raises :class:`UsageError` for a config with no RoPE (learned or ALiBi positions), a RoPE that
    is already scaled, or missing sizes.
    """
    if not isinstance(config, Mapping):
        raise UsageError("a model config must be a JSON object")
    model_type = str(config.get("model_type", ""))
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    has_rope = (
        params is not None or "rope_theta" in config or scaling is not None
        or model_type in _ROPE_MODEL_TYPES or config.get("position_embedding_type") == "rope"
    )
    if not has_rope:
        kind = f"model_type {model_type!r}" if model_type else "this config"
        raise UsageError(
            f"{kind} has no rotary position embedding (no rope_theta or rope_parameters): "
            "ropestretch extends RoPE models only"
        )
    if params is not None and not isinstance(params, Mapping):
        raise UsageError(f"config field rope_parameters must be an object, got {params!r}")
    if params and any(isinstance(v, Mapping) for v in params.values()):
        raise UsageError("per-layer rope_parameters (one RoPE per layer type) are not supported")
    params = dict(params or {})
    if scaling is not None:
        if not isinstance(scaling, Mapping):
            raise UsageError(f"config field rope_scaling must be an object or null, got {scaling!r}")
        params = {**params, **scaling}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise UsageError(
            f"this config's RoPE is already scaled (rope_type {rope_type!r}); "
            "ropestretch extends a model from its unscaled RoPE: give the original model's config"
        )
    base = params.get("rope_theta", config.get("rope_theta", _DEFAULT_THETA))
    if not is_finite_number(base) or base <= 1:
        raise UsageError(f"config field rope_theta must be a number > 1, got {base!r}")
    if "max_position_embeddings" not in config:
        raise UsageError("config has no max_position_embeddings: cannot tell the pre-trained window")
    window = _positive_int(config["max_position_embeddings"], "max_position_embeddings")
    if config.get("head_dim") is not None:
        head_dim = _positive_int(config["head_dim"], "head_dim")
    else:
        if "hidden_size" not in config or "num_attention_heads" not in config:
            raise UsageError("config has neither head_dim nor hidden_size and num_attention_heads")
        head_dim = _positive_int(config["hidden_size"], "hidden_size") // _positive_int(
            config["num_attention_heads"], "num_attention_heads"
        )
    prf = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if isinstance(prf, bool) or not isinstance(prf, (int, float)) or not 0 < prf <= 1:
        raise UsageError(f"partial_rotary_factor must be in (0, 1], got {prf!r}")
    return RopeConfig(window=window, base=float(base), head_dim=head_dim,
                      partial_rotary_factor=float(prf), model_type=model_type)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_config_dict(source: str | os.PathLike) -> dict[str, Any]:
    """Read a ``config.json`` from a file, a model folder, or a Hugging Face hub id.

    The hub is used only when ``source`` is not a local path and looks like ``owner/name``;
    offline, or for an unknown id, it fails with one clear :class:`UsageError`.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UsageError(f"model folder {source} has no config.json")
    elif not path.exists():
        text = str(source)
        looks_like_path = text.endswith(".json") or text.startswith((".", "/", "~")) or os.sep + os.sep in text
        if looks_like_path or not _HUB_ID.match(text) or "/" not in text:
            raise UsageError(f"no such config file or model folder: {source}")
        path = Path(_download_config(text))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} must hold a JSON object")
    return config


def _download_config(model_id: str) -> str:
    """``config.json`` of a hub model: from the local cache, else from the hub when it is reachable."""
    import logging
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, hf_hub_download

    try:
        return hf_hub_download(model_id, "config.json", local_files_only=True)
    except Exception:
        pass
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.getaddrinfo(host, 443)
    except OSError as err:
        raise UsageError(
            f"cannot reach the model hub for {model_id!r} ({err}); pass a local config.json or model folder"
        ) from None
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        return hf_hub_download(model_id, "config.json")
    except Exception as err:  # unknown, gated or private repo, network failure: one message
        reason = type(err).__name__
        raise UsageError(f"could not fetch config.json of hub model {model_id!r} ({reason})") from None


def load_rope_config(source: str | os.PathLike | Mapping[str, Any]) -> RopeConfig:
    """A :class:`RopeConfig` from a config dict, a ``config.json``, a model folder or a hub id."""
    config = source if isinstance(source, Mapping) else load_config_dict(source)
    return rope_config_from_dict(config)
