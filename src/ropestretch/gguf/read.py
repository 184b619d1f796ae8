"""Reading GGUF files: a file checked against its own tensor table (:func:`check_gguf`), and a
GGUF model dequantized once by transformers (``gguf_file=``) into a safetensors folder with its
tokenizer, kept in the cache (:func:`ropestretch.paths.cache_dir`) and reused by every later command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from ropestretch.errors import UsageError, first_line
from ropestretch.paths import cache_dir

_DONE = ".complete"


def _fingerprint(path: Path) -> str:
    """The file's content: sha256 of the whole of it (about 0.2 s for SmolLM2's 98 MB), so that the
    same file installed in several places, copied or renamed is dequantized once, and two files that
    differ anywhere never share a copy. Remembered in the cache's ``hashes.json`` by path, size and
    modification time, so that a large file is hashed once, not by every command."""
    from ropestretch.jsonl import write_whole

    stat = path.stat()
    seen = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    index_path = cache_dir() / "gguf" / "hashes.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        index = index if isinstance(index, dict) else {}
    except (OSError, ValueError):
        index = {}
    if isinstance(index.get(seen), str):
        return index[seen]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    index[seen] = digest.hexdigest()[:16]
    try:  # a memo only: two commands writing it at once lose an entry, never a copy
        index_path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(index_path, json.dumps(index, indent=1))
    except OSError:
        pass
    return index[seen]


def gguf_cache_folder(path: Path) -> Path:
    """The dequantized copy's folder: named by the file's content alone."""
    return cache_dir() / "gguf" / _fingerprint(path)


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
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(path.resolve()), "size": path.stat().st_size},
                                                    indent=2))
        (tmp / _DONE).write_text("")
    except BaseException:  # a full disk while dequantizing: no half-written copy left in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / _DONE).is_file():
            raise
    if not quiet:
        print(f"ropestretch: dequantized {path.name} into {folder} (once: later commands reuse it)", file=sys.stderr)
    return folder


def check_gguf(path: str | Path):
    """A reader open on a GGUF file whose tensor table and data the file holds, or one line."""
    import gguf

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001  (numpy's errors on a short file: cryptic, so named here)
        raise UsageError(f"{path} is truncated or not a GGUF file ({size:,} bytes; reading its tensor table "
                         f"failed: {first_line(err)})") from None
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise UsageError(f"{path} is truncated: tensor {tensor.name} ends at byte {end:,} of a "
                             f"{size:,}-byte file")
    return reader
