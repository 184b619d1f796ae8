"""A transformers checkpoint written as one GGUF file for llama.cpp and Ollama: a fine-tuned or an
applied checkpoint, with exactly the RoPE transformers runs for it.

The Llama architecture (Llama, Mistral without a sliding window, SmolLM and their kin) in f32, f16
or q8_0 (norms stay f32; a matrix whose rows do not split into q8_0's blocks of 32 stays f16). As
llama.cpp expects for this architecture, each head's query and key rows are reordered from the
halves transformers rotates to the adjacent pairs llama.cpp rotates; rotary pair ``i`` keeps its
frequency. The RoPE comes from :func:`ropestretch.rope.llamacpp.checkpoint_rope`; the tokenizer
from ``tokenizer.json`` (byte-level BPE, with a pre-tokenizer llama.cpp knows by name), its merges,
special tokens and chat template through ``gguf.SpecialVocab``. Tensors are converted and written
one at a time, so memory holds one tensor, not the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ropestretch.errors import UsageError

TYPES = ("f16", "q8_0", "f32")
ARCHITECTURE = {"llama": "llama", "mistral": "llama"}  # transformers model_type -> GGUF architecture
Q8_BLOCK = 32

# tokenizer.json's pre-tokenizer -> the name llama.cpp knows it by (tokenizer.ggml.pre)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = {
    "ByteLevel+regex": "gpt-2",
    "Digits(individual)|ByteLevel+regex": "smollm",
    f"Split({_LLAMA3_SPLIT})|ByteLevel": "llama-bpe",
    f"Split({_QWEN2_SPLIT})|ByteLevel": "qwen2",
}


def _pre_signature(pre: dict | None) -> str:
    """A pre-tokenizer of tokenizer.json in the short form :data:`PRE_TOKENIZERS` is keyed by."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    out = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel" and step.get("add_prefix_space"):
            out.append("ByteLevel+prefix-space")  # llama.cpp adds no prefix space to a BPE vocabulary
        elif kind == "ByteLevel":
            out.append("ByteLevel+regex" if step.get("use_regex", True) else "ByteLevel")
        elif kind == "Digits":
            out.append("Digits(individual)" if step.get("individual_digits") else "Digits")
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            out.append(f"Split({(step.get('pattern') or {}).get('Regex', '?')})")
        else:
            out.append(str(kind))
    return "|".join(out)


@dataclass
class Vocab:
    """tokenizer.ggml.* fields: the tokens in id order, their types, the pre-tokenizer's name."""

    tokens: list[str]
    types: list[int]
    pre: str


def read_vocab(folder: Path, vocab_size: int) -> Vocab:
    """The checkpoint's byte-level BPE vocabulary as llama.cpp's ``gpt2`` tokenizer model, padded to
    the model's ``vocab_size``; one line for a tokenizer llama.cpp would not tokenize the same way."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"{folder} has no tokenizer.json; GGUF output needs a fast (tokenizers) tokenizer")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise UsageError(f"{path} is not a tokenizers file") from None
    signature = _pre_signature(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in signature or data.get("normalizer"):
        raise UsageError(f"{path}: GGUF output covers byte-level BPE tokenizers (Llama 3, Qwen, SmolLM, GPT-2) "
                         "without a normalizer; convert this one with llama.cpp's convert_hf_to_gguf.py")
    pre = PRE_TOKENIZERS.get(signature)
    if pre == "llama-bpe" and not model.get("ignore_merges"):
        pre = None  # llama.cpp takes a whole word that is in the vocabulary as one token for llama-bpe
    if pre is None:
        raise UsageError(f"{path}: llama.cpp's name for the pre-tokenizer {signature[:80]} is not known to "
                         "ropestretch; convert with llama.cpp's convert_hf_to_gguf.py")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    kinds = [int(gguf.TokenType.UNUSED)] * vocab_size
    entries = [(text, i, int(gguf.TokenType.NORMAL)) for text, i in model["vocab"].items()]
    entries += [(t["content"], t["id"], int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED))
                for t in data.get("added_tokens", [])]
    for text, i, kind in entries:
        if not 0 <= i < vocab_size:
            raise UsageError(f"{path}: token {text!r} has id {i}, outside the model's vocabulary of {vocab_size}")
        tokens[i], kinds[i] = text, kind
    return Vocab(tokens, kinds, pre)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise UsageError(f"{folder} has no safetensors weights (model.safetensors or its index)")


def _pairs_adjacent(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query or key projection (or its bias) from transformers' rotate-half layout, in which
    a head's pair ``i`` is rows ``i`` and ``i + head_dim / 2``, to llama.cpp's, where it is ``2i, 2i+1``."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class _Tensor:
    source: str  # the safetensors name
    name: str  # the GGUF name
    file: Path
    shape: tuple
    heads: int | None  # query/key: heads to reorder by


def _plan(folder: Path, config, arch: str) -> list[_Tensor]:
    import gguf
    from safetensors import safe_open

    names = gguf.TensorNameMap(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = getattr(config, "tie_word_embeddings", False)
    plan = []
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                    continue
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise UsageError(f"{file.name}: tensor {key} has no GGUF name in the {arch} architecture")
                heads = (config.num_attention_heads if ".q_proj." in key else kv_heads if ".k_proj." in key else None)
                plan.append(_Tensor(key, name, file, tuple(f.get_slice(key).get_shape()), heads))
    return plan


def _stored(t: _Tensor, kind: str) -> tuple[tuple, Any, int, Any]:
    """How ``t`` is stored: (shape numpy-side, numpy dtype, bytes, GGML type)."""
    import gguf

    n = int(np.prod(t.shape))
    if len(t.shape) == 1 or kind == "f32":
        return t.shape, np.dtype(np.float32), 4 * n, gguf.GGMLQuantizationType.F32
    if kind == "q8_0" and t.shape[-1] % Q8_BLOCK == 0:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]
        shape = (*t.shape[:-1], t.shape[-1] // block * size)
        return shape, np.dtype(np.uint8), int(np.prod(shape)), gguf.GGMLQuantizationType.Q8_0
    return t.shape, np.dtype(np.float16), 2 * n, gguf.GGMLQuantizationType.F16


def _data(t: _Tensor, kind: str) -> np.ndarray:
    import gguf
    import torch
    from safetensors import safe_open

    with safe_open(str(t.file), framework="pt") as f:
        w = f.get_tensor(t.source).to(torch.float32).numpy()
    if t.heads:
        w = _pairs_adjacent(w, t.heads)
    _, dtype, _, ggml = _stored(t, kind)
    if ggml == gguf.GGMLQuantizationType.Q8_0:
        return gguf.quants.quantize(w, ggml)
    return np.ascontiguousarray(w.astype(dtype))


def write_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, kind: str = "f16",
               config: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
    """Write the checkpoint folder ``model_dir`` to the new GGUF file ``out`` with its weights as
    ``kind`` (:data:`TYPES`); ``config``: a config dict to use instead of the folder's (an applied
    scaling, written without copying the weights); ``name``: ``general.name`` (default: the
    folder's name). Returns what was written: architecture, RoPE keys, tensors, bytes."""
    import gguf
    from transformers import AutoConfig

    from ropestretch.rope.export import quiet_engine_keys
    from ropestretch.gguf.keys import checkpoint_rope
    from ropestretch.gguf.write import add_rope_keys, gguf_writer, write_tensors

    folder, out = Path(model_dir), Path(out)
    if kind not in TYPES:
        raise UsageError(f"--type takes {', '.join(TYPES)}; got {kind}")
    quiet_engine_keys()
    stored = AutoConfig.from_pretrained(folder)
    config = stored if config is None else type(stored).from_dict(config)
    arch = ARCHITECTURE.get(config.model_type)
    if arch is None:
        raise UsageError(f"GGUF output covers the Llama architecture ({', '.join(ARCHITECTURE)}); {folder} is "
                         f"{config.model_type}")
    if getattr(config, "sliding_window", None):
        raise UsageError(f"{folder} attends through a sliding window of {config.sliding_window}, which llama.cpp's "
                         "llama architecture does not")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = checkpoint_rope(config)
    vocab = read_vocab(folder, config.vocab_size)
    plan = _plan(folder, config, arch)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    with gguf_writer(out, arch) as writer:
        writer.add_name(name or folder.name)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
        if head_dim != config.hidden_size // heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(file_type)
        add_rope_keys(writer, arch, rope)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer, quiet=True)
        write_tensors(writer, [(t.name, *_stored(t, kind)) for t in plan], lambda i: _data(plan[i], kind), rope)
    return {"architecture": arch, "type": kind, "rope": rope.keys, "rope_freqs": rope.freq_factors is not None,
            "tensors": len(plan), "bytes": out.stat().st_size, "pre_tokenizer": vocab.pre}
