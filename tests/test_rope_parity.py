"""ropestretch.rope against transformers' own RoPE functions, and round trips through saved checkpoints."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from conftest import tiny_llama_config
from ropestretch.rope import rope_config_from_dict, scale
from ropestretch.rope.export import apply_to_checkpoint, exported_config

# (config overrides, target): integer and non-integer factors, other bases and head dims
CASES = [
    ({}, 256),                                                     # s = 4
    ({}, 100),                                                     # s = 1.5625
    ({"rope_theta": 500000.0, "hidden_size": 128}, 64 * 8),        # head dim 32, large base
    ({"max_position_embeddings": 4096, "hidden_size": 512, "num_attention_heads": 4}, 16384),  # head dim 128
    ({"max_position_embeddings": 4096, "hidden_size": 512, "num_attention_heads": 4}, 10000),
]
SCALINGS = ["none", "linear", "ntk", "dynamic", "yarn", "dprope"]


def hf_rope(config_dict, seq_len):
    """What stock transformers computes for this config: (inv_freq, attention scaling)."""
    config = LlamaConfig(**config_dict)
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)


@pytest.mark.parametrize("overrides,target", CASES)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_inv_freq_and_attention_match_transformers(scaling, overrides, target):
    config = tiny_llama_config(**overrides)
    scaled = scale(rope_config_from_dict(config), scaling, target)
    exported = exported_config(config, scaled)
    inv_freq, attention = hf_rope(exported, seq_len=target)
    torch.testing.assert_close(scaled.inv_freq, inv_freq, rtol=2e-7, atol=0)
    assert scaled.attention_factor == pytest.approx(attention, rel=1e-12)
    # the transformers 4.x spelling (rope_scaling + top-level rope_theta) means the same
    legacy = {k: v for k, v in exported.items() if k != "rope_parameters"}
    inv_freq_legacy, attention_legacy = hf_rope(legacy, seq_len=target)
    torch.testing.assert_close(inv_freq_legacy, inv_freq, rtol=0, atol=0)
    assert attention_legacy == attention


def test_formulas_from_methods_md():
    """Independent float64 formulas of docs/methods.md (not transformers' code path)."""
    import math

    rope = rope_config_from_dict(tiny_llama_config(max_position_embeddings=4096, hidden_size=512,
                                                   num_attention_heads=4))
    d, b, s = 128, 10000.0, 4.0
    theta = torch.tensor([b ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    lin = scale(rope, "linear", 16384)
    torch.testing.assert_close(lin.inv_freq.double(), theta / s, rtol=1e-6, atol=0)
    ntk = scale(rope, "ntk", 16384)
    b2 = b * s ** (d / (d - 2))
    torch.testing.assert_close(ntk.inv_freq.double(), torch.tensor([b2 ** (-2 * i / d) for i in range(d // 2)],
                                                                   dtype=torch.float64), rtol=1e-6, atol=0)
    yarn = scale(rope, "yarn", 16384)
    assert yarn.attention_factor == pytest.approx(0.1 * math.log(4) + 1)
    # YaRN: highest frequencies untouched, lowest fully interpolated
    assert yarn.factors[0] == pytest.approx(1.0) and yarn.factors[-1] == pytest.approx(4.0)
    assert all(1 - 1e-6 <= f <= 4 + 1e-6 for f in yarn.factors)
    dp = scale(rope, "dprope", 16384)
    assert set(dp.factors) <= {1.0, 4.0}


@pytest.mark.parametrize("scaling", SCALINGS)
def test_saved_checkpoint_reloads_with_same_rope(tiny_llama_dir, tmp_path, scaling):
    """A tiny Llama written by `apply` and loaded by stock from_pretrained computes ropestretch's RoPE."""
    rope = rope_config_from_dict(json.loads((tiny_llama_dir / "config.json").read_text()))
    target = 200  # s = 3.125: a non-integer factor
    scaled = scale(rope, scaling, target)
    out = apply_to_checkpoint(tiny_llama_dir, tmp_path / "out", scaled)
    model = AutoModelForCausalLM.from_pretrained(out)
    rotary = model.model.rotary_emb
    ids = torch.randint(0, 128, (1, target))
    with torch.no_grad():
        model(ids)  # dynamic and longrope settle their frequencies on a sequence of length L
    torch.testing.assert_close(rotary.inv_freq, scaled.inv_freq, rtol=2e-7, atol=0)
    assert rotary.attention_scaling == pytest.approx(scaled.attention_factor, rel=1e-12)
    assert model.config.max_position_embeddings == scaled.max_position_embeddings
    written = json.loads((out / "config.json").read_text())
    assert "original_max_position_embeddings" not in written  # vLLM would cap its max length there
    meta = json.loads((out / "ropestretch.json").read_text())
    assert (meta["scaling"], meta["window"], meta["target"]) == (scaling, 64, target)


def test_apply_keeps_weights_and_logits_within_window(tiny_llama_dir, tmp_path):
    """linear at s scales positions: the extended model at positions s*m equals the original at m."""
    rope = rope_config_from_dict(json.loads((tiny_llama_dir / "config.json").read_text()))
    out = apply_to_checkpoint(tiny_llama_dir, tmp_path / "lin", scale(rope, "linear", 256))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ext = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 128, (1, 16))
    pos = torch.arange(16)[None]
    with torch.no_grad():
        a = base(ids, position_ids=pos).logits
        b = ext(ids, position_ids=pos * 4).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scaling", ["linear", "dynamic", "yarn", "dprope"])
def test_partial_rotary_factor_matches_transformers(scaling):
    # 32 of 64 dims, in a family whose attention can rotate a share of the head (Llama's rotates all of it)
    config = {**tiny_llama_config(hidden_size=128, num_attention_heads=2, partial_rotary_factor=0.5), "model_type": "nemotron"}
    rope = rope_config_from_dict(config)
    assert rope.rotary_dim == 32
    scaled = scale(rope, scaling, 256)
    inv_freq, attention = ROPE_INIT_FUNCTIONS[scaled.rope_parameters["rope_type"]](
        LlamaConfig(**exported_config(config, scaled)), None, seq_len=256)
    assert inv_freq.shape == (16,)
    torch.testing.assert_close(scaled.inv_freq, inv_freq, rtol=2e-7, atol=0)
    assert scaled.attention_factor == pytest.approx(attention)


@pytest.mark.parametrize("betas", [(8.0, 1.0), (4.0, 0.5), (64.0, 2.0), (2.5, 1.5)])
@pytest.mark.parametrize("overrides,target", [CASES[2], CASES[3]])
def test_yarn_betas_match_transformers(betas, overrides, target):
    """Non-default beta_fast / beta_slow: exported, and computed as transformers computes them."""
    config = tiny_llama_config(**overrides)
    rope = rope_config_from_dict(config)
    scaled = scale(rope, "yarn", target, beta_fast=betas[0], beta_slow=betas[1])
    assert (scaled.rope_parameters["beta_fast"], scaled.rope_parameters["beta_slow"]) == betas
    inv_freq, attention = hf_rope(exported_config(config, scaled), seq_len=target)
    torch.testing.assert_close(scaled.inv_freq, inv_freq, rtol=2e-7, atol=0)
    assert scaled.attention_factor == pytest.approx(attention, rel=1e-12)
    # a lower beta_fast keeps more of the fast pairs unscaled
    default = scale(rope, "yarn", target)
    keep = [f == pytest.approx(1.0) for f in scaled.factors]
    keep_default = [f == pytest.approx(1.0) for f in default.factors]
    assert sum(keep) >= sum(keep_default) if betas[0] < 32 else sum(keep) <= sum(keep_default)


@pytest.mark.parametrize("kwargs,message", [
    ({"beta_fast": 1.0, "beta_slow": 1.0}, "must be larger than beta_slow"),
    ({"beta_fast": 0.5}, "must be larger than beta_slow"),
    ({"beta_slow": 0.0}, "beta_slow must be a positive number"),
    ({"beta_fast": float("nan")}, "beta_fast must be a positive number"),
    ({"beta_fast": "8"}, "beta_fast must be a positive number"),
])
def test_bad_yarn_betas(kwargs, message):
    from ropestretch.errors import UsageError

    with pytest.raises(UsageError, match=message):
        scale(rope_config_from_dict(tiny_llama_config()), "yarn", 256, **kwargs)
