"""Property-based hostile input (hypothesis): the 27 shipped family configs mutated the way a
careless edit or a broken download would (a RoPE field set to null, a string, a negative number,
zero, 1e308, NaN, 2**62, a list, an object or a bool; keys deleted; factor lists of the wrong
length; bad targets), read by `ropestretch rope` and applied to a tiny model by `ropestretch apply`.

Every outcome is exit 0 with strict JSON (no NaN or Infinity) and a checkpoint that stock
transformers loads, or one line and exit 2. Never another exception."""

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clihelp import run_cli

FAMILIES = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs" / "families").glob("*.json"))
HOSTILE = [None, "abc", -1, 0, 1e308, math.nan, math.inf, 2**62, [1, 2], {"a": 1}, True, False, -0.5, 0.5, ""]
# the fields that carry RoPE, at the top level and inside rope_scaling / rope_parameters / text_config
TOP = ["rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings", "head_dim", "hidden_size",
       "num_attention_heads", "partial_rotary_factor", "rotary_pct", "rotary_emb_base", "layer_types",
       "original_max_position_embeddings", "qk_rope_head_dim", "rope_local_base_freq", "model_type", "text_config",
       "sliding_window_pattern", "num_key_value_heads", "num_hidden_layers"]
INNER = ["rope_type", "type", "factor", "rope_theta", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
         "attention_factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor",
         "short_factor", "long_factor", "short_mscale", "long_mscale", "partial_rotary_factor", "truncate",
         "full_attention", "sliding_attention"]
DELETE = object()


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant} in the output")
    return json.loads(text, parse_constant=refuse)


def sections(config: dict) -> list[dict]:
    """Every dict a RoPE field can sit in: the config, its text_config, rope_scaling, rope_parameters
    (and its per-layer-type entries)."""
    found = [config]
    for holder in (config, config.get("text_config")):
        if not isinstance(holder, dict):
            continue
        if holder is not config:
            found.append(holder)
        for key in ("rope_scaling", "rope_parameters"):
            value = holder.get(key)
            if isinstance(value, dict):
                found.append(value)
                found += [v for v in value.values() if isinstance(v, dict)]
    return found


@st.composite
def mutated(draw, family=None):
    path = family or draw(st.sampled_from(FAMILIES))
    config = json.loads(path.read_text())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(sections(config)))
        key = draw(st.sampled_from(TOP if where is config else INNER + list(where)))
        kind = draw(st.sampled_from(["value", "value", "delete", "list"]))
        if kind == "delete":
            where.pop(key, None)
        elif kind == "list":  # a factor list of the wrong length, or of hostile members
            n = draw(st.integers(0, 70))
            where[key] = [draw(st.sampled_from([1.0, 2.0, -1.0, 0.0, 1e308, "x", None]))] * n
        else:
            where[key] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))  # never the shared object itself
    return path.stem, config


TARGETS = st.sampled_from(["x2", "x4", "0", "-4096", "1", str(2**62), "1e9", "nan", "4096.5"])


def target_for(config: dict, target: str) -> str:
    if target.startswith("x"):
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        window = text.get("max_position_embeddings", 4096)
        window = window if isinstance(window, int) and not isinstance(window, bool) and 0 < window < 2**20 else 4096
        return str(min(window * int(target[1:]), 1 << 20))
    return target


def one_line_or_ok(result) -> bool:
    code, out, err = result
    if code == 0:
        return True
    assert code == 2, (code, err[-3000:])
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=mutated(), target=TARGETS, scaling=st.sampled_from(["dprope", "yarn", "linear", "ntk", "dynamic"]))
def test_rope_reads_any_config_or_says_why_not(tmp_path, case, target, scaling):
    name, config = case
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))  # NaN and Infinity written as Python's json writes them
    result = run_cli("rope", "--config", path, "--target", target_for(config, target), "--scaling", scaling,
                     "--bins", 90, "--json")
    if one_line_or_ok(result):
        record = strict_json(result[1])
        assert all(math.isfinite(f) and f > 0 for f in record["factors"])


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """One tiny Llama's weights (head dim 16, 2 layers), reused under every mutated config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import tiny_llama_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(LlamaConfig(**tiny_llama_config())).save_pretrained(folder, safe_serialization=True)
    return folder


TINY_ROPES = [  # the RoPEs a Llama checkpoint can carry, in both layouts
    {"rope_theta": 10000.0},
    {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                         "original_max_position_embeddings": 32}},
    {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
]


@st.composite
def tiny_configs(draw):
    from conftest import tiny_llama_config

    config = tiny_llama_config()
    config.pop("rope_theta")
    config.update(json.loads(json.dumps(draw(st.sampled_from(TINY_ROPES)))))
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(sections(config)))
        key = draw(st.sampled_from(["rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings",
                                    "head_dim", "layer_types", "partial_rotary_factor"] if where is config else INNER))
        if draw(st.booleans()):
            where.pop(key, None)
        else:
            where[key] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
    return config


# found by this test: a Llama (whose attention rotates the whole head) asking a partial rotary factor
LLAMA_PARTIAL = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128,
                 "max_position_embeddings": 64, "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "bos_token_id": 1,
                 "eos_token_id": 2, "rope_theta": 500000.0,
                 "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16, "partial_rotary_factor": 0.5}}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=tiny_configs(), scaling=st.sampled_from(["dprope", "yarn", "linear", "ntk", "dynamic"]))
@example(config=LLAMA_PARTIAL, scaling="dprope")
@example(config={**{k: v for k, v in LLAMA_PARTIAL.items() if k != "rope_scaling"}, "partial_rotary_factor": 0.5},
         scaling="yarn")
def test_apply_writes_what_stock_transformers_loads_or_says_why_not(tmp_path_factory, tiny_weights, config, scaling):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("case")
    model = tmp / "model"
    shutil.copytree(tiny_weights, model)
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli("apply", "--model", model, "--scaling", scaling, "--target", 256, "--out", tmp / "out")
    if not one_line_or_ok(result):
        assert not (tmp / "out").exists() and not (tmp / ".out.partial").exists()
        return
    strict_json((tmp / "out" / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(tmp / "out")
    with torch.no_grad():
        logits = loaded(input_ids=torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 100, 255]])).logits
    assert torch.isfinite(logits).all()


def test_a_whole_head_family_asking_a_partial_rotary_factor_is_refused_before_anything_is_written(tmp_path, tiny_weights):
    """Llama's attention rotates the whole head: a checkpoint whose RoPE covers half of it would not run
    in transformers, so apply (and train, through the same export) refuse it in one line."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_weights, model)
    (model / "config.json").write_text(json.dumps({**LLAMA_PARTIAL, "rope_scaling": None, "partial_rotary_factor": 0.5}))
    code, _, err = run_cli("apply", "--model", model, "--scaling", "yarn", "--target", 256, "--out", tmp_path / "out")
    assert code == 2 and "rotates the whole attention head" in err and "8 of 16 dimensions" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
