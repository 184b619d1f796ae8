"""A model's files checked before a command relies on them, from their headers alone (no weights
loaded): a download cut short, a file copied halfway, a shard missing, a config that does not
describe the weights. Each problem is one :class:`~ropestretch.errors.UsageError` naming the file.

- :func:`check_folder`: ``config.json`` is a JSON object; every safetensors file (every shard that
  ``model.safetensors.index.json`` names) is present and its header covers the file exactly
  (``safetensors.safe_open`` checks the header against the file's size); the tokenizer and
  generation files parse (``tokenizer.json`` by the tokenizers library); and the weights, read from
  the headers, are the ones the config describes (the model built from the config on the ``meta``
  device, which allocates nothing): the same shapes, and the layers the config describes, no fewer
  and no more.
- :func:`check_gguf`: the GGUF file's tensor table is read (``gguf.GGUFReader``, memory-mapped) and
  every tensor's data lies inside the file.

A bit flipped inside the weights' data cannot be seen from headers (safetensors and GGUF carry no
checksum); a flip in a header, or in a JSON file, is refused as corrupt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError, first_line

INDEX = "model.safetensors.index.json"
JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def _json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not text: {what} must be JSON (a binary or damaged file?)") from None
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON ({first_line(err)}): {what} is damaged or cut short") from None
    except RecursionError:
        raise UsageError(f"{path} is nested too deeply to be {what}") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path} holds a JSON {type(value).__name__}, not the object {what} is")
    return value


def _tokenizer(path: Path) -> None:
    """``tokenizer.json`` read by the tokenizers library, as transformers will read it."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001  (the library's parse errors are plain Exceptions)
        raise UsageError(f"{path} is JSON but not a tokenizer ({first_line(err)}): the file is damaged or "
                         "another kind") from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a folder's weights are in: the shards its index names, or every
    ``*.safetensors`` file; a shard the index names that is missing is refused."""
    index = folder / INDEX
    if index.is_file():
        weight_map = _json_object(index, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UsageError(f"{index} has no weight_map of tensor -> shard")
        shards = [folder / str(name) for name in dict.fromkeys(weight_map.values())]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise UsageError(f"{folder}: {len(missing)} of the {len(shards)} shards {INDEX} names are missing "
                             f"({', '.join(missing[:3])}); the download is incomplete")
        return shards
    return sorted(folder.glob("*.safetensors"))


def weight_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the files' headers; a file whose header does not cover it exactly
    (cut short, or not safetensors) is refused."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), "pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError, ValueError) as err:
            raise UsageError(f"{path} is truncated or not a safetensors file ({first_line(err)})") from None
    return shapes


def expected_shapes(config: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], list[str]] | None:
    """The parameter shapes of the model ``config`` describes (built on the meta device) and the
    patterns of file tensors its loader ignores (DeepSeek-V3's extra prediction layer), or None for a
    model transformers cannot build here (its own code on the hub, say)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    try:
        from huggingface_hub.errors import StrictDataclassError  # transformers 5's typed configs
    except ImportError:  # transformers 4: no typed fields; what it cannot build is left to later checks
        class StrictDataclassError(Exception):  # noqa: N801
            pass
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            kind = config.get("model_type")
            cfg = AutoConfig.for_model(kind, **{k: v for k, v in config.items() if k != "model_type"})
        except StrictDataclassError as err:  # transformers' check of the fields' types
            raise UsageError(f"config.json: transformers refuses it ({' '.join(str(err).split())})") from None
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except UsageError:
        raise
    except Exception:  # noqa: BLE001  (not buildable here: the shapes are not checked)
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    return shapes, list(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])


def check_folder(folder: str | Path) -> None:
    """Refuse, in one line, a checkpoint folder whose files cannot be what a command relies on."""
    folder = Path(folder)
    config = _json_object(folder / "config.json", "config.json")
    for name in JSON_FILES:
        if (folder / name).is_file():
            _json_object(folder / name, name)
    if (folder / "tokenizer.json").is_file():
        _tokenizer(folder / "tokenizer.json")
    files = weight_files(folder)
    if not files:
        return  # no weights: a config-only folder (the commands that need weights say so)
    shapes = weight_shapes(files)
    if config.get("quantization_config"):  # packed quantized tensors: their shapes are not the config's
        return
    built = expected_shapes(config)
    if not built:
        return
    expected, ignored = built
    prefix = _prefix(shapes, expected)
    names = {prefix + n: n for n in shapes}  # the model's name -> the file's
    wrong = [n for n in names if n in expected and shapes[names[n]] != expected[n]]
    if wrong:
        n = wrong[0]
        raise UsageError(f"{folder}: config.json does not describe these weights ({len(wrong)} tensors differ, e.g. "
                         f"{n} is {list(shapes[names[n]])} in the file and {list(expected[n])} by the config)")
    # the layers, by index: names within a layer may differ from the model's (transformers 5 fuses a
    # checkpoint's per-expert tensors on load), the layers a file holds may not
    held, wanted = _layers(names), _layers(expected)
    # past the config's layers, what the loader ignores (DeepSeek-V3's prediction layer) is no extra one
    extra = _layers(n for n in names if not any(re.search(p, n) for p in ignored)) - wanted
    if wanted - held:
        raise UsageError(f"{folder}: config.json describes {len(wanted)} layers and the weights lack "
                         f"{len(wanted - held)} of them (layer {min(wanted - held)} on): a file is incomplete, or "
                         "the config is another model's")
    if extra:
        raise UsageError(f"{folder}: the weights hold layers config.json has no place for (layer {min(extra)} "
                         f"on, {len(held | wanted)} in all against its {len(wanted)}): the config describes fewer layers")


def _layers(names) -> set[int]:
    """The layer indices that tensor names hold (``...layers.7.mlp...``), of every stack together."""
    return {int(m.group(1)) for n in names for m in [re.search(r"(?:^|\.)layers\.(\d+)\.", n)] if m}


def _prefix(shapes, expected) -> str:
    """The prefix (``model.``) that the file's tensor names lack against the model's, if any: a base
    model saved without its head."""
    if any(n in expected for n in shapes):
        return ""
    heads = {n.split(".", 1)[0] + "." for n in expected if "." in n}
    return next((h for h in heads if any(h + n in expected for n in shapes)), "")

