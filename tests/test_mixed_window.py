"""Keeping short context: a length-switching RoPE (mixed-window training, LongRoPE2) checked against
stock transformers' rotary module, the collator's short regime, `train --mixed-window` end to end,
and ProLong's short-data share."""

import json
from pathlib import Path

import pytest
import torch

from clihelp import assert_one_line_error, run_cli
from conftest import REPO

FAMILIES = Path(REPO) / "examples" / "configs" / "families"


def stock_config(config_dict):
    """transformers' own config object for a config dict."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "transformers_version"})


def rotary_at(config, length):
    """inv_freq and attention scaling transformers' module uses for a sequence of ``length`` positions."""
    from ropestretch.gguf.keys import rotary_module

    rotary = rotary_module(config)
    x = torch.zeros(1, length, 8)
    rotary(x, torch.arange(length)[None])  # the module switches by the largest position id
    return rotary.inv_freq.double(), float(rotary.attention_scaling)


@pytest.mark.parametrize("family, scaling", [("llama-2-7b.json", "yarn"), ("llama-3.1-8b.json", "linear"),
                                             ("qwen2.5-7b.json", "dprope")])
def test_switching_rope_runs_the_models_own_frequencies_within_the_window_and_the_scaled_past_it(family, scaling):
    from ropestretch.rope import load_config_dict, load_rope_config, scale
    from ropestretch.rope.export import exported_config
    from ropestretch.rope.scalings import length_switching

    path = FAMILIES / family
    raw = load_config_dict(path)
    rope = load_rope_config(path)
    target = 4 * rope.window
    plain = scale(rope, scaling, target)
    switching = length_switching(plain)
    config = stock_config(exported_config(raw, switching))
    before = stock_config(raw)
    short_inv, short_attention = rotary_at(config, rope.window)  # positions 0..N-1: the short regime
    own_inv, _ = rotary_at(before, rope.window)
    assert torch.allclose(short_inv, own_inv, rtol=1e-6, atol=0)
    long_inv, long_attention = rotary_at(config, rope.window + 1)
    assert torch.allclose(long_inv, plain.inv_freq.double(), rtol=1e-5, atol=0)
    assert long_attention == pytest.approx(plain.attention_factor, rel=1e-6)
    assert short_attention == pytest.approx(long_attention)  # transformers applies one factor to both regimes
    params = switching.rope_parameters
    assert params["rope_type"] == "longrope" and params["original_max_position_embeddings"] == rope.window
    assert params["short_mscale"] == params["long_mscale"] == pytest.approx(plain.attention_factor)


def test_switching_is_refused_where_it_cannot_be_written_or_means_nothing():
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.scalings import length_switching

    rope = load_rope_config(FAMILIES / "llama-2-7b.json")
    for name in ("dynamic", "none"):
        with pytest.raises(Exception, match="needs a fixed scaling"):
            length_switching(scale(rope, name, 4 * rope.window))
    olmo = load_rope_config(FAMILIES / "olmo-2-7b.json")
    if olmo.family.export_types and "longrope" not in olmo.family.export_types:
        with pytest.raises(Exception, match="cannot hold a length-switching"):
            length_switching(scale(olmo, "linear", 4 * olmo.window))


def test_the_collators_short_regime_is_a_deterministic_share_and_leaves_the_long_batches_as_they_were():
    from ropestretch.positions import PositionCollator

    mixed = PositionCollator("cream", 32, 256, seed=3, short_share=0.4, k=4)
    alone = PositionCollator("cream", 32, 256, seed=3, k=4)
    short = 0
    for b in range(200):
        features = [{"input_ids": list(range(32)), "sample_id": 2 * b + i} for i in range(2)]
        out = mixed(features)
        if out["position_ids"].max() < 32:
            short += 1
            assert out["position_ids"].tolist() == [list(range(32))] * 2
            assert mixed.is_short([2 * b, 2 * b + 1])
        else:
            assert torch.equal(out["position_ids"], alone(features)["position_ids"])
    assert 0.3 < short / 200 < 0.5 and mixed.counts == {"short": short, "long": 200 - short}
    again = PositionCollator("cream", 32, 256, seed=3, short_share=0.4, k=4)
    assert [again.is_short([2 * b, 2 * b + 1]) for b in range(200)] == \
        [mixed.is_short([2 * b, 2 * b + 1]) for b in range(200)]  # the same after a restart
    with pytest.raises(Exception, match="rows of the target length"):
        PositionCollator("full", 32, 256, short_share=0.5)
    with pytest.raises(Exception, match=r"in \[0, 1\)"):
        PositionCollator("cream", 32, 256, short_share=1.0)


def test_train_mixed_window_writes_a_switching_checkpoint_that_stock_transformers_runs(tiny_lm_dir, text_dir,
                                                                                      tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "mixed"
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("The cat sat on the mat. " * 400)
    code, _, err = run_cli("train", "--model", tiny_lm_dir, "--data", text_dir, "--out", out, "--target", 256,
                           "--positions", "cream", "--cream-k", 4, "--scaling", "yarn", "--mixed-window", 0.5,
                           "--short-data", short, "--short-share", 0.4, "--steps", 6, "--batch-size", 2,
                           "--lr", 1e-3, "--no-progress")
    assert code == 0, err
    assert "short data:" in err
    config = json.loads((out / "config.json").read_text())
    params = config["rope_parameters"]
    assert params["rope_type"] == "longrope" and params["original_max_position_embeddings"] == 64
    assert set(params["short_factor"]) == {1.0} and max(params["long_factor"]) == pytest.approx(4.0, rel=1e-4)
    meta = json.loads((out / "ropestretch.json").read_text())
    batches = meta["mixed_window"]["batches_collated"]
    assert 6 <= sum(batches.values()) <= 7 and batches["short"] and batches["long"]  # the loader may run one ahead
    assert meta["mixed_window"]["short_share"] == 0.5
    assert "short data:" in meta["data"]
    loaded = AutoConfig.from_pretrained(out)
    short_inv, _ = rotary_at(loaded, 64)
    base_inv, _ = rotary_at(AutoConfig.from_pretrained(tiny_lm_dir), 64)
    assert torch.allclose(short_inv, base_inv, rtol=1e-6, atol=0)
    # the run resumes as itself, and its identity records the mixed window
    assert_one_line_error(run_cli("train", "--model", tiny_lm_dir, "--data", text_dir, "--out", out, "--target", 256,
                                  "--positions", "cream", "--cream-k", 4, "--scaling", "yarn", "--steps", 6,
                                  "--batch-size", 2, "--lr", 1e-3, "--no-progress"),
                          "differs in: mixed_window, short_data, short_share")


@pytest.mark.parametrize("extra, fragment", [
    (["--positions", "full", "--mixed-window", 0.5], "positions full"),
    (["--scaling", "none", "--mixed-window", 0.5], "needs a fixed scaling"),
    (["--mixed-window", 1.5], "in [0, 1)"),
    (["--short-share", 0.4], "go together"),
])
def test_bad_mixed_window_requests_are_one_line(tiny_lm_dir, text_dir, tmp_path, extra, fragment):
    assert_one_line_error(run_cli("train", "--model", tiny_lm_dir, "--data", text_dir, "--out", tmp_path / "x",
                                  "--target", 256, "--steps", 2, "--no-progress", *extra), fragment)
    assert not (tmp_path / "x").exists()


def _run(label, correct_by_length, window=None):
    rows = []
    for length, correct in correct_by_length.items():
        samples = [{"i": i, "correct": c, "logprob": -1.0, "tokens": 1, "prompt": f"p{length}-{i}"}
                   for i, c in enumerate(correct)]
        rows.append({"test": "passkey", "cell": {"length": length, "depth": 50.0}, "accuracy": sum(correct) / len(correct),
                     "correct": sum(correct), "n": len(correct), "seed": 0, "samples": samples})
    return {"label": label, "folder": label, "args": {"passkey": {"scoring": "forced"}}, "results": {"passkey": rows},
            "meta": {"window": window} if window else {}}


def test_retention_is_the_in_window_accuracy_ratio_to_the_base_beside_the_gain_past_it():
    from ropestretch.report import retention_section
    from ropestretch.stats import paired_ratio_of_means

    base = _run("base", {64: [True] * 10, 256: [False] * 10})
    tuned = _run("tuned", {64: [True] * 9 + [False], 256: [True] * 6 + [False] * 4}, window=64)
    text = "\n".join(retention_section([base, tuned], base))
    assert "### `tuned` against `base`" in text
    ratio, low, high = paired_ratio_of_means([1.0] * 9 + [0.0], [1.0] * 10)
    assert ratio == 0.9 and low < 0.9 < high <= 1.0
    assert f"90.0% [{100 * low:.1f}-{100 * high:.1f}], n = 10" in text
    assert "+60 points (6 / 0 right only in each, McNemar p = 0.031), n = 10" in text
    assert "98.5%" in text
    assert "has no ropestretch model record" in "\n".join(retention_section([base, _run("x", {64: [True]})], base))
