"""Scalings composed with a RoPE that is already scaled, checked against transformers' own init
functions, and the export details every engine reads (vLLM's as read from its source)."""

import json
import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from clihelp import assert_one_line_error, run_cli
from tiny_models import FAMILY_DIR, build, forward_at, loaded_rope, real_config
from ropestretch.errors import UsageError
from ropestretch.rope import rope_config_from_dict, rope_frequencies, scale
from ropestretch.rope.export import apply_to_checkpoint, exported_config
from ropestretch.rope.frequencies import yarn_ramp
from ropestretch.rope.scalings import turns_ramp


@pytest.fixture(scope="module")
def llama31(tmp_path_factory):
    return build("llama-3.1-8b", tmp_path_factory.mktemp("llama31"))


@pytest.mark.parametrize("scaling", ["linear", "yarn", "dprope"])
def test_llama31_to_512k_loads_as_transformers_llama3_composed(llama31, tmp_path, scaling):
    """Llama 3.1 8B from 128K to 512K: the written checkpoint's loaded frequencies are transformers'
    own llama3 frequencies composed with the new scaling."""
    llama3, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**real_config("llama-3.1-8b")), None)
    rope = rope_config_from_dict(real_config("llama-3.1-8b"))
    result = scale(rope, scaling, 524288)
    s = 4.0
    if scaling == "linear":
        expected, attention = llama3.double() / s, 1.0
    elif scaling == "dprope":
        interpolate = result.details["choice"].interpolate
        expected, attention = llama3.double() / torch.where(interpolate, s, 1.0).double(), 1.0
        assert 0 < int(interpolate.sum()) < rope.pairs
    else:
        ramp = turns_ramp(llama3, 131072, 32, 1).double()
        expected, attention = llama3.double() * (ramp / s + 1 - ramp), 0.1 * math.log(s) + 1
    out = apply_to_checkpoint(llama31, tmp_path / scaling, result)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    forward_at(model, 524287)
    inv_freq, loaded_attention = loaded_rope(model)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-5, atol=0)
    assert loaded_attention == pytest.approx(attention, rel=1e-9)
    assert model.config.max_position_embeddings == 524288  # exported as longrope, which vLLM does not scale


def test_apply_cli_llama31_config_folder(tmp_path):
    """`ropestretch apply --model <a Llama 3.1 config> --scaling yarn --target 524288` as the issue asks."""
    model = build("llama-3.1-8b", tmp_path / "m", "hub")
    code, out, err = run_cli("apply", "--model", model, "--scaling", "yarn", "--target", 524288, "--out", tmp_path / "o")
    assert code == 0, err
    written = json.loads((tmp_path / "o" / "config.json").read_text())
    assert written["rope_scaling"]["rope_type"] == "longrope" and written["max_position_embeddings"] == 524288
    meta = json.loads((tmp_path / "o" / "ropestretch.json").read_text())
    assert (meta["pretrained_rope_type"], meta["exported_rope_type"]) == ("llama3", "longrope")


@pytest.mark.parametrize("dim,base,window", [(128, 10000.0, 4096), (64, 1e5, 8192), (128, 5e5, 8192), (96, 1e4, 4096),
                                             (16, 1e4, 64), (256, 1e6, 32768)])
@pytest.mark.parametrize("betas", [(32, 1), (8, 1), (16, 2)])
def test_turns_ramp_is_yarns_ramp_on_an_unscaled_rope(dim, base, window, betas):
    theta = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    torch.testing.assert_close(turns_ramp(theta, window, *betas), yarn_ramp(dim, base, window, *betas), rtol=0, atol=1e-6)


def test_yarn_on_an_unscaled_rope_is_still_transformers_yarn():
    rope = rope_config_from_dict(real_config("llama-2-7b"))
    result = scale(rope, "yarn", 16384)
    assert result.exported.rope_type == "yarn" and not result.composed
    inv_freq, attention = ROPE_INIT_FUNCTIONS["yarn"](LlamaConfig(**exported_config(real_config("llama-2-7b"), result)),
                                                      None)
    torch.testing.assert_close(result.inv_freq, inv_freq, rtol=0, atol=0)
    assert result.attention_factor == attention


@pytest.mark.parametrize("name", ["phi-3-mini-128k", "phi-3.5-mini"])
@pytest.mark.parametrize("scaling", ["linear", "yarn", "dprope"])
def test_phi3_keeps_its_short_factors(name, scaling, tmp_path):
    """Phi-3 128K to 512K: the long factors carry the composition; the short ones and the original
    window are untouched, so a sequence within 4096 tokens runs as before."""
    real = real_config(name)
    rope = rope_config_from_dict(real)
    result = scale(rope, scaling, 524288)
    params = result.rope_parameters
    assert params["short_factor"] == real["rope_scaling"]["short_factor"]
    assert params["original_max_position_embeddings"] == 4096
    composed = torch.tensor(params["long_factor"], dtype=torch.float64) / torch.tensor(real["rope_scaling"]["long_factor"])
    assert composed.min() >= 1 - 1e-9 and composed.max() <= 4 + 1e-9  # each pair scaled by 1..s on top of its own
    # Phi-3's transformers 4.x config takes exactly type, short_factor and long_factor, so its attention
    # factor is LongRoPE's own of the new window in every engine
    config = exported_config(real, result)
    assert config["rope_scaling"] == {"type": "longrope", "short_factor": params["short_factor"],
                                      "long_factor": params["long_factor"]}
    assert config["original_max_position_embeddings"] == 4096  # Phi3Config reads it from the top level
    assert result.attention_factor == pytest.approx(math.sqrt(1 + math.log(128) / math.log(4096)))
    folder = build(name, tmp_path / "m")
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(folder)
    after = AutoModelForCausalLM.from_pretrained(apply_to_checkpoint(folder, tmp_path / "o", result))
    forward_at(before, 100)
    forward_at(after, 100)
    torch.testing.assert_close(loaded_rope(after)[0], loaded_rope(before)[0], rtol=0, atol=0)


@pytest.mark.parametrize("scaling", ["linear", "ntk", "dynamic", "yarn"])
def test_phi3_mini_4k_exports_only_what_phi3config_accepts(scaling):
    rope = rope_config_from_dict(real_config("phi-3-mini-4k"))
    if scaling == "dynamic":
        with pytest.raises(UsageError, match="Phi-3 config accepts only default, longrope"):
            scale(rope, scaling, 16384)
        return
    assert scale(rope, scaling, 16384).exported.rope_type in ("default", "longrope")


def test_cohere_slow_pairs_are_not_extrapolated_past_what_pretraining_saw():
    """rope_theta 8e6: with 360 bins the slowest pairs score a tie; a pair that never completed a turn
    in N is interpolated, so over [0, L) its angles stay within those it saw over [0, N)."""
    rope = rope_config_from_dict(real_config("command-r"))
    result = scale(rope, "dprope", 4 * rope.window)
    choice = result.details["choice"]
    f, _ = rope_frequencies(rope)
    tie = torch.isclose(choice.extrapolation, choice.interpolation, rtol=1e-9, atol=1e-12)
    assert int(tie.sum()) >= 5 and bool(choice.interpolate[tie].all())
    slow = (2 * math.pi / f.double()) > rope.window
    reached = result.inv_freq.double() * (result.target - 1)
    seen = f.double() * rope.window
    assert bool((reached[slow & tie] <= seen[slow & tie] * (1 + 1e-6)).all())


@pytest.mark.parametrize("name,rotary,head", [("pythia-160m", 16, 64), ("phi-2", 32, 80), ("stablelm-2-1.6b", 16, 64),
                                              ("deepseek-v2-lite", 64, 64), ("deepseek-v3", 64, 64),
                                              ("mixtral-8x7b", 128, 128), ("gemma-3-1b", 256, 256)])
def test_rotary_width_under_every_name(name, rotary, head):
    rope = rope_config_from_dict(real_config(name))
    assert (rope.rotary_dim, rope.head_dim) == (rotary, head)


def test_gemma3_bases_in_both_spellings():
    one = rope_config_from_dict(real_config("gemma-3-1b"))
    assert (one.base, one.layer_type, one.other_layers["sliding_attention"]["rope_theta"]) == (1e6, "full_attention", 10000)
    four = rope_config_from_dict(real_config("gemma-3-4b"))  # a multimodal config: its text part, class defaults
    assert (four.rope_type, four.scaling["factor"], four.window, four.base) == ("linear", 8.0, 131072, 1e6)
    result = scale(four, "linear", 524288)
    written = exported_config(real_config("gemma-3-4b"), result)
    text = written["text_config"]
    assert text["rope_parameters"]["full_attention"] == {"rope_type": "linear", "rope_theta": 1e6, "factor": 32.0}
    assert text["rope_parameters"]["sliding_attention"]["rope_theta"] == text["rope_local_base_freq"] == 10000.0
    assert text["max_position_embeddings"] == 524288  # vLLM never scales Gemma 3's length by the factor
    assert "rope_parameters" not in written and "max_position_embeddings" not in written


def test_exports_every_engine_reads_alike():
    llama2 = real_config("llama-2-7b")
    rope = rope_config_from_dict(llama2)
    linear = exported_config(llama2, scale(rope, "linear", 16384))
    assert linear["max_position_embeddings"] * linear["rope_scaling"]["factor"] == 16384  # vLLM's default length
    yarn = exported_config(llama2, scale(rope, "yarn", 16384))
    assert yarn["max_position_embeddings"] == 16384 == yarn["rope_scaling"]["original_max_position_embeddings"] * 4
    assert "original_max_position_embeddings" not in yarn  # vLLM would take it as its default length
    dprope = exported_config(llama2, scale(rope, "dprope", 16384))["rope_scaling"]
    assert dprope["attention_factor"] == dprope["short_mscale"] == dprope["long_mscale"] == 1.0
    phi2 = exported_config(real_config("phi-2"), scale(rope_config_from_dict(real_config("phi-2")), "yarn", 8192))
    assert phi2["partial_rotary_factor"] == phi2["rope_parameters"]["partial_rotary_factor"] == 0.4
    mixtral = exported_config(real_config("mixtral-8x7b"),
                              scale(rope_config_from_dict(real_config("mixtral-8x7b")), "yarn", 65536))
    assert mixtral["head_dim"] == 128
    pythia = real_config("pythia-160m")
    ntk = exported_config(pythia, scale(rope_config_from_dict(pythia), "ntk", 8192))
    assert ntk["rotary_emb_base"] == ntk["rope_theta"] > 10000 and ntk["rotary_pct"] == 0.25
    command_r = dict(real_config("command-r"), model_max_length=131072)
    assert exported_config(command_r, scale(rope_config_from_dict(command_r), "yarn", 32768))["model_max_length"] == 32768


def test_deepseek_composition_is_one_clear_refusal(tmp_path):
    rope = rope_config_from_dict(real_config("deepseek-v3"))
    assert (rope.rope_type, rope.scaling["factor"], rope.scaling["mscale_all_dim"]) == ("yarn", 40, 1.0)
    with pytest.raises(UsageError, match="mscale_all_dim"):
        scale(rope, "yarn", 4 * rope.window)
    folder = build("deepseek-v2-lite", tmp_path / "m")
    result = run_cli("apply", "--model", folder, "--scaling", "dprope", "--target", 327680, "--out", tmp_path / "o")
    assert_one_line_error(result, "does not compose")
    assert not (tmp_path / "o").exists()


def test_rope_cli_shows_the_rope_the_model_has():
    code, out, err = run_cli("rope", "--config", FAMILY_DIR / "llama-3.1-8b.json", "--target", 262144, "--json",
                             "--scaling", "linear")
    assert code == 0, err
    data = json.loads(out)
    assert data["rope"]["rope_type"] == "llama3" and data["disturbance"]["dynamic"] is None
    assert data["rope"]["factors"][0] == 1.0 and data["rope"]["factors"][-1] == 8.0
    assert data["exported_rope_type"] == "longrope" and data["factors"][-1] == 16.0
