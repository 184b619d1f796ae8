"""Tiny random models that carry the real RoPE settings of popular checkpoints.

``examples/configs/families/*.json`` hold the RoPE-relevant part of each real ``config.json``
(its hub layout, as transformers 4.x wrote it). :func:`tiny_config` keeps every RoPE setting
(window, base, scaling, head and rotary width, layer types) and shrinks the rest to two layers;
:func:`build` saves such a model with the repo's tiny tokenizer, in the hub layout or in the
layout transformers 5 saves (``rope_parameters``).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILY_DIR = REPO / "examples" / "configs" / "families"
TOKENIZER = REPO / "models" / "tiny-llama-256"
VOCAB = 512

# Sizes that change the parameter count but not the RoPE: set where the family has them.
_SMALL = {
    "intermediate_size": 32, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16,
    "num_local_experts": 2, "num_experts": 2, "n_routed_experts": 2, "num_experts_per_tok": 1, "n_shared_experts": 1,
    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16, "q_lora_rank": 16,
    "qk_nope_head_dim": 16, "v_head_dim": 80,  # DeepSeek: v as wide as q·k (16 + the real 64 rotary)
}


def family_names() -> list[str]:
    return sorted(p.stem for p in FAMILY_DIR.glob("*.json"))


def real_config(name: str) -> dict:
    return json.loads((FAMILY_DIR / f"{name}.json").read_text())


def _class_parameters(model_type: str) -> set:
    import inspect

    from transformers import CONFIG_MAPPING

    return set(inspect.signature(CONFIG_MAPPING[model_type].__init__).parameters)


def tiny_config(name: str) -> dict:
    """The real checkpoint's hub-layout config (its text part, for a multimodal one) with every RoPE
    setting kept and two layers of two heads."""
    from ropestretch.rope.config import text_section, with_class_defaults

    real = copy.deepcopy(dict(text_section(real_config(name))))
    c = copy.deepcopy(real)
    sizes = with_class_defaults(real)
    heads = 2
    if sizes.get("head_dim") is not None or real.get("qk_rope_head_dim") is not None:
        hidden = 64
    else:
        hidden = heads * (sizes["hidden_size"] // sizes["num_attention_heads"])
    c.update(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=1, num_hidden_layers=2,
             vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
             dtype="float32", use_cache=True)
    c.pop("torch_dtype", None)
    for key, value in _SMALL.items():  # every size its config class has, whether or not config.json names it
        if (key in real and real[key] is not None) or key in _class_parameters(c["model_type"]):
            c[key] = value
    if "qk_rope_head_dim" in real:  # DeepSeek MLA with a small mixture of experts
        c.update(n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=16, n_shared_experts=1,
                 first_k_dense_replace=1, n_group=1, topk_group=1, num_key_value_heads=heads)
    if c.get("model_type", "").startswith("gemma3"):
        c["sliding_window_pattern"] = 2  # layer 0 sliding, layer 1 full attention
        c.pop("layer_types", None)
    if "layer_types" in c:
        c["layer_types"] = c["layer_types"][:2]
    if "max_window_layers" in c:
        c["max_window_layers"] = 2
    return c


def build(name: str, folder: Path, layout: str = "hub") -> Path:
    """Save a tiny random model of family ``name`` in ``folder``: ``hub`` keeps the real config.json's
    spelling, ``v5`` the one transformers 5 writes with ``save_pretrained``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    hub = tiny_config(name)
    config = AutoConfig.for_model(hub["model_type"], **{k: v for k, v in hub.items() if k != "model_type"})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    if layout == "hub":
        (folder / "config.json").write_text(json.dumps(hub, indent=2))
    for item in TOKENIZER.iterdir():
        if item.name.startswith("tokenizer") or item.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(item, folder / item.name)
    return folder


def rotary_modules(model) -> list:
    """Every rotary-embedding module of a loaded model."""
    return [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]


def loaded_rope(model, layer_type: str | None = None):
    """(inv_freq, attention scaling) of a loaded model's rotary module, for one layer type where it
    keeps one per type (Gemma 3). Call after a forward pass, which settles dynamic and longrope."""
    rotary = rotary_modules(model)[0]
    if hasattr(rotary, "layer_types") and layer_type is not None and hasattr(rotary, f"{layer_type}_inv_freq"):
        return getattr(rotary, f"{layer_type}_inv_freq"), getattr(rotary, f"{layer_type}_attention_scaling")
    return rotary.inv_freq, rotary.attention_scaling


def forward_at(model, position: int, tokens: int = 1):
    """Logits for ``tokens`` tokens whose last sits at ``position`` (cheap at any length: only the
    positions' cos and sin are computed)."""
    import torch

    ids = torch.arange(3, 3 + tokens)[None] % VOCAB
    pos = torch.arange(position - tokens + 1, position + 1)[None]
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos, use_cache=False).logits


def tiny_gguf(path: Path, arch: str) -> Path:
    """A one-tensor GGUF file of architecture ``arch`` (what a file ropestretch cannot use looks like)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
