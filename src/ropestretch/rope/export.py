"""Export a scaled RoPE to standard Hugging Face configs and checkpoints.

The config gets the transformers 5.x ``rope_parameters`` (flat, or keyed by layer type where the
model has one RoPE per layer type) and, for transformers 4.x and vLLM, the same RoPE as
``rope_scaling`` with a top-level ``rope_theta``: transformers 5 and vLLM read ``rope_scaling``
first when both are present, and both say the same thing. Every key an engine may read the
rotary width or base from is written with the same value (``partial_rotary_factor`` at the top
level, ``head_dim``, a family's own spelling such as GPT-NeoX's ``rotary_emb_base``), so no
engine falls back to a default of its own.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError
from ropestretch.rope.config import text_section
from ropestretch.rope.families import Family
from ropestretch.rope.scalings import Scaled

METADATA_FILE = "ropestretch.json"


ENGINE_ONLY_KEYS = {"short_mscale", "long_mscale"}  # written for vLLM; transformers does not use them


class _EngineKeysFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("Unrecognized keys in `rope_parameters`"):
            return True
        keys = set(re.findall(r"'([^']+)'", text.split(":", 1)[-1]))
        return not (keys and keys <= ENGINE_ONLY_KEYS)


def quiet_engine_keys() -> None:
    """Loading a longrope export, transformers 5 warns about the vLLM-only keys it carries
    (:data:`ENGINE_ONLY_KEYS`); ropestretch's own loads drop that one line (idempotent)."""
    logger = logging.getLogger("transformers.modeling_rope_utils")
    if not any(isinstance(f, _EngineKeysFilter) for f in logger.filters):
        logger.addFilter(_EngineKeysFilter())


def legacy_rope_scaling(params: Mapping[str, Any], fam: Family | None = None) -> dict[str, Any] | None:
    """The transformers 4.x ``rope_scaling`` of one RoPE's parameters (``None`` for an unscaled one),
    in the exact keys the family's 4.x config class accepts where it is strict about them."""
    out = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if out["rope_type"] == "default":
        return None
    keys = (fam.legacy_keys or {}).get(out["rope_type"]) if fam else None
    if keys:
        out = {k: (out["rope_type"] if k == "type" else out[k]) for k in keys}
    return out


def rope_scaling(scaled: Scaled) -> dict[str, Any] | None:
    """The transformers 4.x ``rope_scaling`` dict of the extended layers (``None`` for ``default``)."""
    return legacy_rope_scaling(scaled.rope_parameters, scaled.rope.family)


def exported_config(config: Mapping[str, Any], scaled: Scaled) -> dict[str, Any]:
    """A copy of ``config`` with ``scaled`` written in: rope_parameters, rope_scaling, rope_theta, the
    rotary width, and ``max_position_embeddings`` (see :func:`ropestretch.rope.scalings.scale`)."""
    out = copy.deepcopy(dict(config))
    section = out["text_config"] if text_section(config) is not config else out
    new, fam = scaled.exported, scaled.rope.family
    if fam.whole_head and new.partial_rotary_factor != 1.0:
        raise UsageError(f"{new.model_type} rotates the whole attention head in transformers, but the config asks "
                         f"a partial_rotary_factor of {new.partial_rotary_factor:g} ({new.rotary_dim} of {new.head_dim} "
                         "dimensions): no checkpoint of it would run; remove partial_rotary_factor or fix model_type")
    params = new.parameters()
    if new.layer_type:
        nested = {**copy.deepcopy(dict(new.other_layers)), new.layer_type: params}
        section["rope_parameters"] = nested
        local = nested.get("sliding_attention")
        if fam.local_theta_key and local:
            section[fam.local_theta_key] = local["rope_theta"]
    else:
        section["rope_parameters"] = params
    section["rope_scaling"] = legacy_rope_scaling(params, fam)
    for key in {"rope_theta", *[k for k in fam.theta_keys if k in section]}:
        section[key] = new.base
    if new.partial_rotary_factor != 1.0:
        for key in {"partial_rotary_factor", *[k for k in fam.partial_keys if k in section]}:
            section[key] = new.partial_rotary_factor
    if fam.rope_head_dim_key is None:
        section["head_dim"] = new.head_dim  # some config classes leave it None, which yarn/longrope can't read
    section["max_position_embeddings"] = new.window
    if section.get("model_max_length"):  # vLLM takes it over max_position_embeddings (Command-R)
        section["model_max_length"] = scaled.target
    original = new.scaling.get("original_max_position_embeddings")
    if fam.top_level_original_window:  # its config class reads it there, over rope_parameters
        if original is not None:
            section["original_max_position_embeddings"] = original
    else:
        section.pop("original_max_position_embeddings", None)  # vLLM would cap its max length there
    return out


def engine_notes(scaled: Scaled) -> list[str]:
    """What a user of another engine must know about this export, one line each (docs/engines.md)."""
    notes = []
    new = scaled.exported
    if new.rope_type == "dynamic":
        notes.append("dynamic serves transformers, which recomputes the base per sequence length; vLLM does not run "
                     "it at these frequencies (0.22 and later: the unscaled base and only N cached positions, so "
                     "log-probs turn NaN past the window, as measured on vLLM 0.32's CPU build; 0.21 and earlier: one "
                     "fixed base), nor does llama.cpp: for them export with --scaling ntk or yarn")
    if new.rope_type == "linear" and new.window != scaled.target:
        notes.append(f"max_position_embeddings holds {new.window} (L / factor): vLLM's default maximum length is "
                     f"that times the factor, {scaled.target}; give other tools max_length {scaled.target}")
    if new.rope_type == "longrope" and tuple(new.scaling["short_factor"]) != tuple(new.scaling["long_factor"]):
        original = new.scaling["original_max_position_embeddings"]
        notes.append(f"short and long factors differ: transformers picks them per sequence (long past {original} "
                     f"tokens), vLLM once from --max-model-len: served past {original} it runs the long factors at "
                     f"every length (measured on vLLM 0.32), so for prompts within {original} serve it with "
                     f"--max-model-len {original}; llama.cpp cannot run it")
    return notes


def config_json(config: Mapping[str, Any]) -> str:
    """``config.json`` text; a value that is not finite would not be JSON, and is refused."""
    try:
        return json.dumps(config, indent=2, allow_nan=False) + "\n"
    except ValueError:
        bad = [k for k, v in config.items() if isinstance(v, float) and not math.isfinite(v)] or ["a nested value"]
        raise UsageError(f"the exported config would hold a number that is not finite ({', '.join(bad)})") from None


def metadata(scaled: Scaled, **extra: Any) -> dict[str, Any]:
    """The ``ropestretch.json`` record: method, window, target, the RoPE before and after, and
    anything the caller adds."""
    record: dict[str, Any] = {
        "scaling": scaled.scaling,
        "window": scaled.rope.window,
        "target": scaled.target,
        "factor": scaled.factor,
        "rope_theta": scaled.rope.base,
        "rotary_dim": scaled.rope.rotary_dim,
        "pretrained_rope_type": scaled.rope.rope_type,
        "exported_rope_type": scaled.exported.rope_type,
        "layer_type": scaled.rope.layer_type,
        "attention_factor": scaled.attention_factor,
        "factors": scaled.factors,
        "engine_notes": engine_notes(scaled),
    }
    choice = scaled.details.get("choice")
    if choice is not None:
        record["dprope"] = {"threshold": choice.threshold, "n_hat": choice.n_hat}
    record.update(extra)
    return record


def _copy_item(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
    else:
        shutil.copy2(src, dst)  # a copy, never a link: writing the new checkpoint must not touch the old


def apply_to_checkpoint(model_dir: str | os.PathLike, out_dir: str | os.PathLike, scaled: Scaled,
                        **record: Any) -> Path:
    """Write a copy of the checkpoint in ``model_dir`` to ``out_dir`` with ``scaled`` in its config.

    ``out_dir`` must not exist or be empty: nothing already there is overwritten. The copy is
    built in a temporary sibling folder and renamed into place, so an interruption leaves
    either nothing or a complete checkpoint.
    """
    from ropestretch.paths import STAGING_MARK, new_folder, staging_folder

    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise UsageError(f"{src} is not a model folder (no config.json)")
    dst = new_folder(out_dir, "--out", {"model folder": src})
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    tmp = staging_folder(dst)
    try:
        for item in src.iterdir():
            if item.name in ("config.json", METADATA_FILE, "source.json") or item.name.startswith("."):
                continue
            _copy_item(item, tmp / item.name)
        (tmp / "config.json").write_text(config_json(exported_config(config, scaled)))
        (tmp / METADATA_FILE).write_text(json.dumps(metadata(scaled, **record), indent=2) + "\n")
        if dst.exists():
            dst.rmdir()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # made by this call: nothing of it is left behind
        raise
    (dst / STAGING_MARK).unlink()  # only now: a kill before the rename leaves a staging folder marked ours
    return dst
