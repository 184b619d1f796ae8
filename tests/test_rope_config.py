"""Reading RoPE geometry from transformers 4.x and 5.x configs, and refusing what can't be extended."""

import pytest

from conftest import tiny_llama_config
from ropestretch import UsageError
from ropestretch.rope import load_rope_config, rope_config_from_dict, scale


def test_reads_v4_and_v5_layouts_alike():
    v4 = tiny_llama_config(rope_theta=500000.0, rope_scaling=None)
    v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    assert rope_config_from_dict(v4) == rope_config_from_dict(v5)
    rope = rope_config_from_dict(v5)
    assert (rope.window, rope.base, rope.head_dim, rope.rotary_dim) == (64, 500000.0, 16, 16)


def test_explicit_head_dim_and_partial_rotary():
    rope = rope_config_from_dict(tiny_llama_config(head_dim=32, partial_rotary_factor=0.25))
    assert (rope.head_dim, rope.rotary_dim, rope.pairs) == (32, 8, 4)


def test_old_llama_config_without_rope_theta_defaults_to_10000():
    config = tiny_llama_config()
    del config["rope_theta"]
    assert rope_config_from_dict(config).base == 10000.0


def test_sizes_a_config_leaves_out_come_from_its_transformers_class():
    config = {k: v for k, v in tiny_llama_config().items() if k != "max_position_embeddings"}
    assert rope_config_from_dict(config).window == 2048  # LlamaConfig's default, as transformers loads it


def test_model_folder_and_file(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(tiny_llama_config()))
    assert load_rope_config(tmp_path) == load_rope_config(tmp_path / "config.json")


@pytest.mark.parametrize("config,message", [
    ({"model_type": "gpt2", "n_positions": 1024, "n_embd": 768, "n_head": 12}, "no rotary position embedding"),
    ({"model_type": "bert", "max_position_embeddings": 512, "position_embedding_type": "absolute"}, "no rotary"),
    (tiny_llama_config(rope_scaling={"rope_type": "linear"}), "needs factor"),
    (tiny_llama_config(rope_scaling={"rope_type": "mrope", "factor": 2.0}), "not one ropestretch reads"),
    (tiny_llama_config(rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 8,
                                     "long_factor": [1.0] * 7}), "7 values for 8 rotary pairs"),
    (tiny_llama_config(rope_scaling={"rope_type": "yarn", "factor": float("inf")}), "positive number"),
    (tiny_llama_config(rope_parameters={"sliding_attention": {"rope_type": "default"}},
                       layer_types=["sliding_attention"] * 2), "no 'full_attention' entry"),
    ({k: v for k, v in tiny_llama_config(model_type="my_rope_lm").items() if k != "max_position_embeddings"},
     "max_position_embeddings"),  # a type transformers does not know: no class default to fall back on
    ({k: v for k, v in tiny_llama_config(model_type="my_rope_lm").items() if k != "hidden_size"}, "head_dim"),
    (tiny_llama_config(partial_rotary_factor=1.5), "partial_rotary_factor"),
    (tiny_llama_config(rope_theta="big"), "rope_theta"),
    (tiny_llama_config(max_position_embeddings=-5), "max_position_embeddings"),
    ([1, 2], "JSON object"),
])
def test_bad_configs(config, message):
    with pytest.raises(UsageError, match=message):
        rope_config_from_dict(config)


@pytest.mark.parametrize("text,message", [("{not json", "not valid JSON"), ("[1]", "JSON object")])
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_rope_config(path)


def test_missing_paths_and_offline_hub(tmp_path):
    with pytest.raises(UsageError, match="no such config"):
        load_rope_config(tmp_path / "nope.json")
    with pytest.raises(UsageError, match="no config.json"):
        load_rope_config(tmp_path)
    with pytest.raises(UsageError, match="hub"):
        load_rope_config("some-org/some-model-that-is-not-cached")


@pytest.mark.parametrize("scaling", ["ntk", "dynamic"])
def test_rotary_dim_two_cannot_do_ntk(scaling):
    rope = rope_config_from_dict(tiny_llama_config(head_dim=8, partial_rotary_factor=0.25))  # rotary dim 2
    assert scale(rope, "linear", 128).inv_freq.shape == (1,)
    with pytest.raises(UsageError, match=scaling):
        scale(rope, scaling, 128)


def test_odd_rotary_dim_is_refused():
    rope = rope_config_from_dict(tiny_llama_config(head_dim=16, partial_rotary_factor=0.3125))  # 5 dims
    with pytest.raises(UsageError, match="even rotary dimension"):
        scale(rope, "dprope", 128)


@pytest.mark.parametrize("target,message", [(64, "longer than"), (10, "longer than"), (0, "positive"),
                                            (-3, "positive"), (100.5, "integer"), ("x", "integer")])
def test_bad_targets(target, message):
    with pytest.raises(UsageError, match=message):
        scale(rope_config_from_dict(tiny_llama_config()), "linear", target)


def test_unknown_scaling_and_option():
    rope = rope_config_from_dict(tiny_llama_config())
    with pytest.raises(UsageError, match="unknown scaling 'ntk2'.*linear"):
        scale(rope, "ntk2", 128)
    with pytest.raises(UsageError, match="takes no option"):
        scale(rope, "linear", 128, bins=10)
