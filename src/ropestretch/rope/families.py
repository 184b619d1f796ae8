"""What is particular to a model family's RoPE: the one place that knows about ``model_type``.

Most families spell their RoPE the Llama way (``rope_theta``, ``rope_scaling`` /
``rope_parameters``, ``head_dim`` or ``hidden_size // num_attention_heads``). The others differ
in a few ways, each a field of :class:`Family`:

- another name for a setting (GPT-NeoX's ``rotary_pct`` and ``rotary_emb_base``);
- a default that its transformers config class fills in when config.json says nothing (Phi's
  ``partial_rotary_factor`` of 0.5, StableLM's 0.25, Gemma 3's ``rope_theta`` of 1e6);
- a rotary width that is not the attention head's (DeepSeek's MLA ``qk_rope_head_dim``);
- one RoPE per layer type (Gemma 3: the sliding layers' ``rope_local_base_freq`` in the
  transformers 4.x layout, ``rope_parameters`` keyed by layer type in 5.x);
- a config class that accepts only some rope types (Phi-3: ``default`` and ``longrope``; its
  transformers 5 class rewrites ``yarn`` to ``longrope``) and reads ``original_max_position_embeddings``
  from the top level;
- a transformers 4.x config class that accepts only an exact set of ``rope_scaling`` keys (Phi-3,
  OLMo), and for Phi-3 no attention factor of its own;
- an attention scale computed from the RoPE settings (DeepSeek's ``mscale_all_dim``), which a
  new scaling would change;
- an attention that rotates the whole head (Llama, Mistral, Qwen 2/3, Gemma, ...), so that a
  ``partial_rotary_factor`` below 1 gives transformers' rope functions fewer frequencies than the
  head it rotates: a checkpoint it cannot run.

Every other module asks :func:`family` and never tests ``model_type`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

# Families whose old config.json files may leave out rope_theta: RoPE is implied by the type.
ROPE_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3",
    "gemma3_text", "phi3", "phi", "stablelm", "starcoder2", "internlm2", "deepseek", "deepseek_v2", "deepseek_v3",
    "olmo", "olmo2", "cohere", "cohere2", "granite", "granitemoe", "gpt_neox", "gptj", "persimmon", "falcon",
    "baichuan", "yi", "chatglm", "exaone", "glm", "nemotron",
}


@dataclass(frozen=True)
class Family:
    """How one family of configs spells and uses its RoPE (see the module docstring).

    Attributes:
        name: a label for messages.
        theta_keys: config keys that may hold the RoPE base, in the order transformers reads them.
        partial_keys: config keys that may hold the rotated share of the head.
        default_theta: the base its config class assumes when config.json gives none.
        default_partial: the rotated share its config class assumes when config.json gives none.
        rope_head_dim_key: a key giving the rotary head width itself (MLA), instead of ``head_dim``.
        layer_rope: True when each layer type has its own RoPE (the full-attention layers are extended,
            the sliding-window ones left as they are).
        local_theta_key / default_local_theta: the sliding layers' base in the transformers 4.x layout.
        export_types: the rope types its config class accepts (None: every stock type).
        top_level_original_window: its config class reads ``original_max_position_embeddings`` from
            the top level of config.json, overriding the one in ``rope_parameters``.
        softmax_reads_rope: its attention scale is computed from the RoPE's factor and mscale, so a
            rescaled RoPE would change attention itself (DeepSeek).
        engine_scales_window: vLLM takes ``max_position_embeddings x factor`` as its default maximum
            length for a linear RoPE (every family but Gemma 3, whose length vLLM never scales).
        legacy_keys: per rope type, the exact keys its transformers 4.x config class accepts in
            ``rope_scaling`` (Phi-3: type, short_factor, long_factor; OLMo: type, factor); other rope types
            are written in full, which that class refuses to load.
        explicit_attention: its configs may carry an ``attention_factor`` (Phi-3's 4.x class accepts none,
            so its LongRoPE attention factor is always its own formula of the window).
        whole_head: its transformers attention rotates the whole head (for MLA, the whole rotary part), never
            a share of it: a ``partial_rotary_factor`` below 1 is not one its model can run.
    """

    name: str
    theta_keys: tuple[str, ...] = ("rope_theta",)
    partial_keys: tuple[str, ...] = ("partial_rotary_factor",)
    default_theta: float = 10000.0
    default_partial: float = 1.0
    rope_head_dim_key: str | None = None
    layer_rope: bool = False
    local_theta_key: str | None = None
    default_local_theta: float = 10000.0
    export_types: tuple[str, ...] | None = None
    top_level_original_window: bool = False
    softmax_reads_rope: bool = False
    engine_scales_window: bool = True
    legacy_keys: dict[str, tuple[str, ...]] | None = None
    explicit_attention: bool = True
    whole_head: bool = False


_OLMO_LEGACY = {"linear": ("type", "factor"), "dynamic": ("type", "factor")}
LLAMA_LIKE = Family("llama-like")
FAMILIES: dict[str, Family] = {
    "gpt_neox": Family("GPT-NeoX", theta_keys=("rope_theta", "rotary_emb_base"),
                       partial_keys=("partial_rotary_factor", "rotary_pct"), default_partial=0.25),
    "phi": Family("Phi", default_partial=0.5),
    "stablelm": Family("StableLM", default_partial=0.25),
    "persimmon": Family("Persimmon", default_partial=0.5),
    "phi3": Family("Phi-3", export_types=("default", "longrope"), top_level_original_window=True,
                   legacy_keys={"longrope": ("type", "short_factor", "long_factor")}, explicit_attention=False),
    "olmo": Family("OLMo", legacy_keys=_OLMO_LEGACY, whole_head=True),
    "olmo2": Family("OLMo 2", legacy_keys=_OLMO_LEGACY, whole_head=True),
    "gemma3_text": Family("Gemma 3", default_theta=1_000_000.0, layer_rope=True,
                          local_theta_key="rope_local_base_freq", engine_scales_window=False, whole_head=True),
    "deepseek_v2": Family("DeepSeek-V2", rope_head_dim_key="qk_rope_head_dim", softmax_reads_rope=True, whole_head=True),
    "deepseek_v3": Family("DeepSeek-V3", rope_head_dim_key="qk_rope_head_dim", softmax_reads_rope=True, whole_head=True),
}
FAMILIES["gemma3"] = FAMILIES["gemma3_text"]  # a Gemma 3 config whose text part is read (see config.text_section)
# transformers' own classes whose attention rotates the whole head (their modeling code never reads
# partial_rotary_factor), spelt the Llama way; other types may rotate a share (GLM, Nemotron, GPT-J)
WHOLE_HEAD = Family("llama-like", whole_head=True)
WHOLE_HEAD_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
                    "starcoder2", "cohere", "cohere2", "granite", "granitemoe", "falcon"}


def family(model_type: str) -> Family:
    """The :class:`Family` of a config's ``model_type`` (the Llama spelling for every type not listed)."""
    return FAMILIES.get(model_type) or (WHOLE_HEAD if model_type in WHOLE_HEAD_TYPES else LLAMA_LIKE)


# transformers' classes whose attention rotates with rotate-half pairing (dimension i with i + d/2) in
# every layer: what an extra rotation of q and k (ropestretch.attention) assumes. Others pair
# interleaved dimensions (Command R, GLM, Ernie 4.5), rotate by complex multiplication (Llama 4), skip
# RoPE in some layers (SmolLM3), or attend through MLA (DeepSeek).
ROTATE_HALF_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "phi",
                     "stablelm", "gpt_neox", "granite", "granitemoe", "olmo", "olmo2", "starcoder2", "gemma", "gemma2",
                     "gemma3_text"}


def rotates_half(model_type: str) -> bool:
    """Whether every layer of this family rotates q and k with rotate-half pairing (see above)."""
    return model_type in ROTATE_HALF_TYPES
