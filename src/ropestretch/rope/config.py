"""The RoPE a model has, read from its Hugging Face ``config.json``.

Reads both layouts: transformers 5.x (``rope_parameters``, flat or keyed by layer type) and
transformers 4.x (top-level ``rope_theta`` and an optional ``rope_scaling``), every rope type
transformers knows (default, linear, dynamic, yarn, longrope, llama3), and each family's
spelling of the rotary width and base (see :mod:`ropestretch.rope.families`). Where both layouts
are present, ``rope_scaling`` wins, as in transformers 5 and vLLM.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError
from ropestretch.rope.families import ROPE_MODEL_TYPES, Family, family

FULL_ATTENTION = "full_attention"
# What each rope type needs besides rope_theta, and the numbers among its options.
_REQUIRED = {
    "default": (), "linear": ("factor",), "dynamic": ("factor",), "yarn": (),
    "longrope": ("short_factor", "long_factor"), "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}
_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
            "attention_factor", "short_mscale", "long_mscale")
LARGEST = 1e6  # no RoPE option of a real model comes near it; past it, logs and products overflow
LARGEST_WINDOW = 1 << 40  # tokens
_ALIASES = {"su": "longrope"}  # Phi-3's first name for LongRoPE


@dataclass(frozen=True)
class RopeConfig:
    """One RoPE as a model runs it: the unscaled base frequencies and how they are already scaled.

    Attributes:
        window: the context window ``N`` (``max_position_embeddings``) the model runs at.
        base: the RoPE base ``b`` (``rope_theta``).
        head_dim: the width whose share ``partial_rotary_factor`` is rotated.
        partial_rotary_factor: the rotated share of ``head_dim``.
        model_type: the config's ``model_type``.
        rope_type: how the base frequencies are already scaled (``default``: not at all; ``llama3``
            for Llama 3.1, ``longrope`` for Phi-3-128k, ``linear`` for Gemma 3, ``yarn`` for DeepSeek).
        scaling: that rope type's other parameters (``factor``, ``short_factor``, ...), as transformers
            names them; ``original_max_position_embeddings`` is always filled in for yarn, longrope
            and llama3.
        layer_type: the layer type this RoPE belongs to when each has its own (``full_attention``).
        other_layers: the RoPE parameters of the other layer types, which extension leaves as they are.
    """

    window: int
    base: float
    head_dim: int
    partial_rotary_factor: float = 1.0
    model_type: str = ""
    rope_type: str = "default"
    scaling: Mapping[str, Any] = field(default_factory=dict)
    layer_type: str | None = None
    other_layers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rotary_dim(self) -> int:
        """Dimensions that are rotated: ``int(head_dim * partial_rotary_factor)``, as transformers does."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def pairs(self) -> int:
        """Number of rotary pairs ``d/2``, one frequency each."""
        return self.rotary_dim // 2

    @property
    def plain(self) -> bool:
        """True when the model runs the unscaled base frequencies over its whole window (``default``,
        or ``dynamic``, which rescales only past the window)."""
        return self.rope_type in ("default", "dynamic")

    @property
    def original_window(self) -> int:
        """The window before the RoPE was scaled (``original_max_position_embeddings``), else ``window``."""
        return int(self.scaling.get("original_max_position_embeddings") or self.window)

    @property
    def family(self) -> Family:
        return family(self.model_type)

    def parameters(self) -> dict[str, Any]:
        """This RoPE as a transformers 5.x ``rope_parameters`` dict (one layer type's)."""
        params: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": float(self.base)}
        if self.partial_rotary_factor != 1.0:
            params["partial_rotary_factor"] = self.partial_rotary_factor
        params.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.scaling.items()})
        return params

    def replace(self, **changes: Any) -> RopeConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for people: the type, base, rotary width and window, and the scaling's main numbers."""
        shown = {k: v for k, v in self.scaling.items() if not isinstance(v, (list, tuple))}
        extra = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in shown.items())
        lists = [k for k, v in self.scaling.items() if isinstance(v, (list, tuple))]
        extra += "".join(f", {k} ({len(self.scaling[k])} values)" for k in lists)
        where = f" [{self.layer_type}]" if self.layer_type else ""
        return (f"{self.rope_type}{where}: rope_theta {self.base:g}, rotary dim {self.rotary_dim} of head dim "
                f"{self.head_dim}, window {self.window}{extra}")


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite: what every numeric RoPE setting must be."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value <= 0 or value > LARGEST_WINDOW:
        raise UsageError(f"config field {what} must be a positive integer up to 2**40, got {_shown(value)}")
    return int(value)


def _shown(value: Any) -> str:
    """A config value as a message shows it: short, on one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fields(config: Mapping[str, Any], where: str = "config") -> None:
    """The type and range of every field the reader takes from a config section, checked before
    any arithmetic (so a hostile value is one line, never a traceback deep in the math):
    ``layer_types`` a list of names, ``rope_type``/``type`` a name, numbers finite and in range,
    ``truncate`` a bool, sizes positive integers."""
    layer_types = config.get("layer_types")
    if layer_types is not None and not (isinstance(layer_types, list) and all(isinstance(t, str) for t in layer_types)):
        raise UsageError(f"{where}: layer_types must be a list of layer type names, got {_shown(layer_types)}")
    for key in ("rope_type", "type"):
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where}: {key} must be a name such as 'yarn', got {_shown(value)}")
    for key in _NUMBERS:
        value = config.get(key)
        if value is not None and (not is_finite_number(value) or not 0 < value <= LARGEST):
            raise UsageError(f"{where}: {key} must be a positive number up to {LARGEST:g}, got {_shown(value)}")
    if config.get("truncate") is not None and not isinstance(config["truncate"], bool):
        raise UsageError(f"{where}: truncate must be true or false, got {_shown(config['truncate'])}")
    for key in ("original_max_position_embeddings",):
        if config.get(key) is not None:
            _positive_int(config[key], key)


def text_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The part of a config that holds the language model: ``text_config`` for a multimodal
    checkpoint (Gemma 3 4B and up) whose top level has no RoPE of its own, else the config itself."""
    text = config.get("text_config")
    own = any(k in config for k in ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings"))
    return text if isinstance(text, Mapping) and not own else config


_SIZE_KEYS = ("max_position_embeddings", "hidden_size", "num_attention_heads", "head_dim")


def with_class_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the sizes it leaves out filled in from its transformers config class, as
    transformers does when it loads it (Gemma 3 4B's ``text_config`` gives no window or head size)."""
    missing = [k for k in _SIZE_KEYS if k not in config]
    if not missing:
        return dict(config)
    try:
        import inspect

        from transformers import CONFIG_MAPPING

        defaults = inspect.signature(CONFIG_MAPPING[str(config.get("model_type"))].__init__).parameters
    except Exception:  # a model type transformers does not know: nothing to fill in
        return dict(config)
    filled = {k: defaults[k].default for k in missing if k in defaults and defaults[k].default is not inspect._empty}
    return {**filled, **config}


def _first(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _layer_params(params: Any, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """``rope_parameters`` keyed by layer type (transformers 5), or None when it is one flat dict."""
    if not isinstance(params, Mapping) or not params:
        return None
    layer_types = set(config.get("layer_types") or ()) | {FULL_ATTENTION, "sliding_attention"}
    if all(k in layer_types and (v is None or isinstance(v, Mapping)) for k, v in params.items()):
        return {k: (dict(v) if v is not None else None) for k, v in params.items()}
    return None


def _check_scaling(rope_type: str, scaling: dict[str, Any], pairs: int, where: str) -> None:
    for name in _REQUIRED[rope_type]:
        if scaling.get(name) is None:
            raise UsageError(f"{where}: rope type {rope_type!r} needs {name}")
    for name in ("short_factor", "long_factor"):
        if name in scaling:
            values = scaling[name]
            if not isinstance(values, (list, tuple)) or not all(is_finite_number(v) and 0 < v <= LARGEST for v in values):
                raise UsageError(f"{where}: {name} must be a list of positive numbers up to {LARGEST:g}")
            if len(values) != pairs:
                raise UsageError(f"{where}: {name} has {len(values)} values for {pairs} rotary pairs")
            scaling[name] = tuple(float(v) for v in values)


def _one_rope(params: Mapping[str, Any], config: Mapping[str, Any], fam: Family, window: int, head_dim: int,
              model_type: str, theta_default: float, layer_type: str | None, where: str) -> RopeConfig:
    check_fields(params, where)
    params = dict(params)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    rope_type = _ALIASES.get(rope_type, rope_type)
    if rope_type not in _REQUIRED:
        raise UsageError(f"{where}: rope type {rope_type!r} is not one ropestretch reads "
                         f"(it reads {', '.join(_REQUIRED)})")
    base = params.pop("rope_theta", None)
    if base is None:
        base = _first(config, fam.theta_keys) if layer_type in (None, FULL_ATTENTION) else None
    base = theta_default if base is None else base
    if not is_finite_number(base) or base <= 1:
        raise UsageError(f"{where}: rope_theta must be a finite number > 1, got {base!r}")
    if base > 1e30:  # transformers computes base ** (2i/d) in float32, whose largest number is 3.4e38
        raise UsageError(f"{where}: rope_theta {base:g} is too large for the float32 arithmetic of RoPE frequencies")
    prf = params.pop("partial_rotary_factor", None)
    prf = _first(config, fam.partial_keys) if prf is None else prf
    prf = fam.default_partial if prf is None else prf
    if not is_finite_number(prf) or not 0 < prf <= 1:
        raise UsageError(f"{where}: partial_rotary_factor must be in (0, 1], got {prf!r}")
    rotary_dim = int(head_dim * prf)
    if rotary_dim > 1 << 16:  # every real model rotates at most a few hundred dimensions
        raise UsageError(f"{where}: a rotary dimension of {rotary_dim:,} (head_dim {head_dim:,} x {prf:g}) is not "
                         "a real model's; check head_dim")
    if rope_type in ("yarn", "longrope", "llama3"):
        original = config.get("original_max_position_embeddings") if fam.top_level_original_window else None
        original = original or params.get("original_max_position_embeddings") or window
        params["original_max_position_embeddings"] = _positive_int(original, "original_max_position_embeddings")
    _check_scaling(rope_type, params, rotary_dim // 2, where)
    return RopeConfig(window=window, base=float(base), head_dim=head_dim, partial_rotary_factor=float(prf),
                      model_type=model_type, rope_type=rope_type, scaling=params, layer_type=layer_type)


def rope_config_from_dict(config: Mapping[str, Any]) -> RopeConfig:
    """The RoPE of a config dict in the transformers 4.x or 5.x layout: for a model with one RoPE
    per layer type, the full-attention layers' RoPE (the one extension changes), with the others in
    ``other_layers``.

    Raises :class:`UsageError` for a config with no RoPE (learned or ALiBi positions), a rope type
    ropestretch does not read, or missing or impossible sizes.
    """
    if not isinstance(config, Mapping):
        raise UsageError("a model config must be a JSON object")
    check_fields(config)
    config = with_class_defaults(text_section(config))
    check_fields(config)
    model_type = str(config.get("model_type", ""))
    fam = family(model_type)
    params, scaling = config.get("rope_parameters"), config.get("rope_scaling")
    has_rope = (params is not None or scaling is not None or _first(config, fam.theta_keys) is not None
                or model_type in ROPE_MODEL_TYPES or config.get("position_embedding_type") == "rope")
    if not has_rope:
        kind = f"model_type {model_type!r}" if model_type else "this config"
        raise UsageError(f"{kind} has no rotary position embedding (no rope_theta or rope_parameters): "
                         "ropestretch extends RoPE models only")
    for name, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is not None and not isinstance(value, Mapping):
            raise UsageError(f"config field {name} must be an object or null, got {value!r}")
    if "max_position_embeddings" not in config:
        raise UsageError("config has no max_position_embeddings: cannot tell the window")
    window = _positive_int(config["max_position_embeddings"], "max_position_embeddings")
    head_key = fam.rope_head_dim_key if fam.rope_head_dim_key in config else "head_dim"
    if config.get(head_key) is not None:
        head_dim = _positive_int(config[head_key], head_key)
    else:
        if "hidden_size" not in config or "num_attention_heads" not in config:
            raise UsageError("config has neither head_dim nor hidden_size and num_attention_heads")
        head_dim = _positive_int(config["hidden_size"], "hidden_size") // _positive_int(
            config["num_attention_heads"], "num_attention_heads")
        if head_dim == 0:
            raise UsageError("config's hidden_size is smaller than num_attention_heads")

    layers = _layer_params(params, config)
    if layers is None and fam.layer_rope:  # the transformers 4.x spelling of one RoPE per layer type
        local = config.get(fam.local_theta_key)
        layers = {FULL_ATTENTION: dict(scaling or params or {}),
                  "sliding_attention": {"rope_type": "default",
                                        "rope_theta": fam.default_local_theta if local is None else local}}
        scaling = None
    if layers is None:
        flat = dict(scaling or params or {})
        if "rope_theta" not in flat and isinstance(params, Mapping) and "rope_theta" in params:
            flat["rope_theta"] = params["rope_theta"]
        return _one_rope(flat, config, fam, window, head_dim, model_type, fam.default_theta, None, "config")
    if layers.get(FULL_ATTENTION) is None:
        raise UsageError(f"rope_parameters is keyed by layer type ({', '.join(layers)}) but has no "
                         f"{FULL_ATTENTION!r} entry: cannot tell which layers to extend")
    full = {**layers[FULL_ATTENTION], **(scaling or {})}  # transformers 5 applies rope_scaling to full attention
    rope = _one_rope(full, config, fam, window, head_dim, model_type, fam.default_theta, FULL_ATTENTION,
                     f"rope_parameters[{FULL_ATTENTION!r}]")
    others = {k: v for k, v in layers.items() if k != FULL_ATTENTION}
    for name, value in others.items():  # validated, kept as written
        if value is not None:
            _one_rope(value, config, fam, window, head_dim, model_type, fam.default_local_theta, name,
                      f"rope_parameters[{name!r}]")
    return rope.replace(other_layers=others)


def load_config_dict(source: str | os.PathLike) -> dict[str, Any]:
    """Read a ``config.json`` from a file, a model folder, a GGUF file or bundled model (see
    :mod:`ropestretch.checkpoints`), or a Hugging Face hub id.

    The hub is used only when ``source`` is not a local path and looks like ``owner/name``;
    offline, or for an unknown id, it fails with one clear :class:`UsageError`.
    """
    from ropestretch.checkpoints import BUNDLED, is_gguf, resolve_model
    from ropestretch.hub import download_config, looks_like_hub_id

    text = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UsageError(f"model folder {source} has no config.json")
    elif text in BUNDLED or (is_gguf(text) and path.is_file()):
        path = resolve_model(text) / "config.json"
    elif not path.exists():
        if not looks_like_hub_id(text):
            raise UsageError(f"no such config file or model folder: {source}")
        path = Path(download_config(text))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except (ValueError, RecursionError):  # a number too long for int(), nesting past Python's parser
        raise UsageError(f"{path} is JSON that cannot be read as a model config (nested too deeply, or a number "
                         "too long)") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} must hold a JSON object")
    return config


def load_rope_config(source: str | os.PathLike | Mapping[str, Any]) -> RopeConfig:
    """A :class:`RopeConfig` from a config dict, a ``config.json``, a model folder or a hub id."""
    config = source if isinstance(source, Mapping) else load_config_dict(source)
    return rope_config_from_dict(config)
