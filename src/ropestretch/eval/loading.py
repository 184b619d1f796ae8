"""Loading a checkpoint for evaluation: its tokenizer alone (cheap), or the model with it, placed."""

from __future__ import annotations

from ropestretch.errors import UsageError, first_line


def load_eval_tokenizer(model_dir: str, trust_remote_code: bool = False):
    """The checkpoint's tokenizer alone (cheap: what a run's arguments need before the model loads)."""
    from transformers import AutoTokenizer

    from ropestretch.rope.export import quiet_engine_keys

    quiet_engine_keys()
    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as err:
        reason = first_line(err)
        raise UsageError(f"cannot load a tokenizer from {model_dir}: {reason}") from None


def load_for_eval(model_dir: str, trust_remote_code: bool = False, placement=None):
    """A checkpoint and its tokenizer in eval mode (safetensors only), placed as ``placement``
    (a :class:`ropestretch.hardware.Placement`; default: float32 on the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ropestretch.hardware import Placement, warn_if_emulated
    from ropestretch.rope.export import quiet_engine_keys

    quiet_engine_keys()
    placement = placement or Placement("cpu", "fp32")
    warn_if_emulated(placement)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=trust_remote_code,
                                                     **placement.load_kwargs())
    except Exception as err:
        reason = first_line(err)
        raise UsageError(f"cannot load a model and tokenizer from {model_dir}: {reason}") from None
    if not placement.device_map:
        model = model.to(placement.device)
    return model.eval(), tokenizer


def kv_cache_bytes(config: dict, length: int, dtype_bytes: int = 4) -> int:
    """Bytes of the keys and values one sequence of ``length`` tokens keeps in every layer."""
    from ropestretch.rope.config import text_section, with_class_defaults

    c = with_class_defaults(text_section(config))
    heads = c.get("num_key_value_heads") or c.get("num_attention_heads") or 1
    head_dim = c.get("head_dim") or (c.get("hidden_size", 0) // max(1, c.get("num_attention_heads") or 1))
    layers = c.get("num_hidden_layers") or 1
    return int(2 * layers * heads * head_dim * length * dtype_bytes)
