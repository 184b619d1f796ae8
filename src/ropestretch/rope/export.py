"""Export a scaled RoPE to standard Hugging Face configs and checkpoints.

The config gets the transformers 5.x ``rope_parameters`` and, for transformers 4.x and vLLM,
the same scaling as ``rope_scaling`` with a top-level ``rope_theta``. transformers 5 reads
``rope_scaling`` first when both are present; both say the same thing.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from ropestretch.errors import UsageError
from ropestretch.rope.scalings import Scaled

METADATA_FILE = "ropestretch.json"


def rope_scaling(scaled: Scaled) -> dict[str, Any] | None:
    """The transformers 4.x ``rope_scaling`` dict (``None`` for an unscaled ``default`` RoPE)."""
    params = {k: v for k, v in scaled.rope_parameters.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return None if params["rope_type"] == "default" else params


def exported_config(config: Mapping[str, Any], scaled: Scaled) -> dict[str, Any]:
    """A copy of ``config`` with ``scaled`` written in: rope_parameters, rope_scaling, rope_theta and
    ``max_position_embeddings`` (``L``; the pre-trained ``N`` for ``dynamic``, see its docstring)."""
    out = copy.deepcopy(dict(config))
    out["rope_parameters"] = copy.deepcopy(scaled.rope_parameters)
    out["rope_scaling"] = rope_scaling(scaled)
    out["rope_theta"] = scaled.rope_parameters["rope_theta"]
    out["max_position_embeddings"] = scaled.max_position_embeddings
    out.pop("original_max_position_embeddings", None)  # vLLM would cap its max length there
    return out


def metadata(scaled: Scaled, **extra: Any) -> dict[str, Any]:
    """The ``ropestretch.json`` record: method, window, target and anything the caller adds."""
    record: dict[str, Any] = {
        "scaling": scaled.scaling,
        "window": scaled.rope.window,
        "target": scaled.target,
        "factor": scaled.factor,
        "rope_theta": scaled.rope.base,
        "rotary_dim": scaled.rope.rotary_dim,
        "attention_factor": scaled.attention_factor,
        "factors": scaled.factors,
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
    src, dst = Path(model_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise UsageError(f"{src} is not a model folder (no config.json)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"output folder {dst} already exists and is not empty; choose a new one")
    if dst.resolve() == src.resolve():
        raise UsageError("output folder must differ from the model folder")
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        if item.name in ("config.json", METADATA_FILE) or item.name.startswith("."):
            continue
        _copy_item(item, tmp / item.name)
    (tmp / "config.json").write_text(json.dumps(exported_config(config, scaled), indent=2) + "\n")
    (tmp / METADATA_FILE).write_text(json.dumps(metadata(scaled, source=str(src), **record), indent=2) + "\n")
    if dst.exists():
        dst.rmdir()
    tmp.rename(dst)
    return dst
