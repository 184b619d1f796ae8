"""GGUF out. `ropestretch apply` from the bundled SmolLM2 .gguf to a new .gguf for llama.cpp: every
tensor is copied byte for byte, the RoPE is written in llama.cpp's own keys (or its per-pair
rope_freqs tensor), and what llama.cpp cannot express is one line. `ropestretch gguf` (and apply
from a folder to a .gguf): a transformers checkpoint converted, checked against transformers' own
GGUF reader and rotary module. That llama.cpp runs these files at the frequencies transformers
computes is `make engines`' check (engines/check.py)."""

import numpy as np
import pytest

from clihelp import assert_one_line_error, run_cli
from ropestretch.checkpoints import bundled_file, resolve_model
from ropestretch.rope import load_rope_config, scale

NAME = "smollm2-135m-instruct"


def fields(reader):
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


@pytest.fixture(scope="module")
def source():
    import gguf

    return gguf.GGUFReader(str(bundled_file(NAME)))


@pytest.mark.parametrize("scaling", ["yarn", "dprope"])  # llama.cpp's own keys; the rope_freqs tensor
def test_apply_writes_a_gguf_with_the_scaled_rope(tmp_path, source, scaling):
    import gguf

    out = tmp_path / f"{scaling}.gguf"
    code, text, err = run_cli("apply", "--model", NAME, "--scaling", scaling, "--target", 32768, "--out", out)
    assert code == 0, err
    written = gguf.GGUFReader(str(out))
    before, after = fields(source), fields(written)
    scaled = scale(load_rope_config(resolve_model(NAME)), scaling, 32768)
    assert after["llama.context_length"] == 32768
    expected = {"yarn": {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
                         "llama.rope.scaling.original_context_length": 8192, "llama.rope.freq_base": 1e5},
                "linear": {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
                "ntk": {"llama.rope.scaling.type": "none", "llama.rope.freq_base": pytest.approx(scaled.exported.base,
                                                                                                  rel=1e-6)},
                "dprope": {"llama.rope.scaling.type": "none", "llama.rope.freq_base": 1e5}}[scaling]
    assert {k: after[k] for k in expected} == expected
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(k.startswith(("llama.rope.", "llama.context_length")) for k in changed), changed
    tensors = {t.name: t for t in written.tensors}
    for t in source.tensors:  # quantized weights unchanged, byte for byte
        assert tensors[t.name].tensor_type == t.tensor_type and np.array_equal(tensors[t.name].data, t.data)
    if scaling == "dprope":  # per-pair divisors of the base frequencies, as llama.cpp divides by them
        freqs = np.asarray(tensors["rope_freqs.weight"].data)
        np.testing.assert_allclose(freqs, np.asarray(scaled.factors), rtol=1e-6)
        assert set(np.round(freqs, 6)) <= {1.0, 4.0} and 1.0 in freqs and 4.0 in freqs
    else:
        assert "rope_freqs.weight" not in tensors
    assert text.startswith(f"wrote {out}") and len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("scaling,keys", [
    ("linear", {"rope.scaling.type": "linear", "rope.scaling.factor": 4.0, "rope.freq_base": 1e5}),
    ("ntk", {"rope.scaling.type": "none", "rope.scaling.factor": 1.0}),
    ("none", {"rope.scaling.type": "none", "rope.scaling.factor": 1.0, "rope.freq_base": 1e5}),
])
def test_the_other_scalings_in_llama_cpp_terms(scaling, keys):
    from ropestretch.gguf.keys import gguf_rope

    scaled = scale(load_rope_config(resolve_model(NAME)), scaling, 32768)
    rope = gguf_rope(scaled)
    assert {k: rope.keys[k] for k in keys} == keys and rope.keys["context_length"] == 32768
    assert rope.freq_factors is None
    if scaling == "ntk":  # the larger base transformers' own ntk export holds
        assert rope.keys["rope.freq_base"] == pytest.approx(scaled.exported.base) and scaled.exported.base > 4e5


def test_a_scaling_on_top_of_llama3_goes_into_rope_freqs():
    """Llama 3.1's own per-pair factors times the new scaling's, for llama.cpp to divide by; yarn on
    top of it needs an attention factor with per-pair frequencies, which llama.cpp lacks."""
    from conftest import REPO
    from ropestretch.errors import UsageError
    from ropestretch.gguf.keys import gguf_rope

    rope = load_rope_config(f"{REPO}/examples/configs/families/llama-3.1-8b.json")
    scaled = scale(rope, "dprope", 4 * rope.window)
    written = gguf_rope(scaled)
    np.testing.assert_allclose(written.freq_factors, np.asarray(scaled.factors), rtol=1e-6)
    assert written.keys["rope.scaling.type"] == "none" and written.freq_factors.max() > 8  # llama3's 8 and more
    with pytest.raises(UsageError, match="llama.cpp applies no attention factor"):
        gguf_rope(scale(rope, "yarn", 4 * rope.window))


def test_what_llama_cpp_cannot_express_or_ropestretch_cannot_write_is_one_line(tmp_path, tiny_lm_dir):
    from tiny_models import tiny_gguf

    assert_one_line_error(run_cli("apply", "--model", NAME, "--scaling", "dynamic", "--target", 32768,
                                  "--out", tmp_path / "d.gguf"), "llama.cpp has no dynamic NTK")
    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"mine")
    assert_one_line_error(run_cli("apply", "--model", NAME, "--scaling", "yarn", "--target", 32768, "--out", taken),
                          "already exists")
    assert taken.read_bytes() == b"mine"
    assert_one_line_error(run_cli("apply", "--model", NAME, "--scaling", "yarn", "--target", 32768, "--type", "q8_0",
                                  "--out", tmp_path / "t.gguf"), "keeps its tensors")
    assert_one_line_error(run_cli("apply", "--model", tiny_lm_dir, "--scaling", "yarn", "--target", 256, "--type",
                                  "f16", "--out", tmp_path / "t"), "--type applies to an --out ending in .gguf")
    other = tiny_gguf(tmp_path / "qwen.gguf", "qwen2")
    assert_one_line_error(run_cli("apply", "--model", other, "--scaling", "yarn", "--target", 32768,
                                  "--out", tmp_path / "q.gguf"), "is qwen2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen.gguf", "taken.gguf"]


# --- a transformers checkpoint written as GGUF (`ropestretch gguf`, apply to a .gguf from a folder) ---


def llama_cpp_frequencies(values: dict, factors, pairs: int) -> tuple[np.ndarray, float]:
    """The rotary frequencies and attention scale llama.cpp runs for these GGUF values, written from
    ggml's rope (ggml_rope_yarn_corr_dims and rope_yarn): an independent reading of the keys."""
    import math

    base = values["llama.rope.freq_base"]
    extrap = base ** -(np.arange(pairs) * 2 / (2 * pairs))
    if factors is not None:
        extrap = extrap / np.asarray(factors, dtype=np.float64)
    kind = values.get("llama.rope.scaling.type", "none")
    if kind == "none":
        return extrap, 1.0
    factor = values["llama.rope.scaling.factor"]
    if kind == "linear":
        return extrap / factor, 1.0
    assert kind == "yarn"
    orig = values["llama.rope.scaling.original_context_length"]

    def dim(beta):
        return 2 * pairs * math.log(orig / (beta * 2 * math.pi)) / (2 * math.log(base))

    low = max(0, math.floor(dim(32)))  # the llama architecture reads no betas from the file: 32 and 1
    high = min(2 * pairs - 1, math.ceil(dim(1)))
    mix = 1 - np.clip((np.arange(pairs) - low) / max(0.001, high - low), 0, 1)
    return extrap / factor * (1 - mix) + extrap * mix, 1 + 0.1 * math.log(factor)


def gguf_values(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    factors = tensors["rope_freqs.weight"].data if "rope_freqs.weight" in tensors else None
    return fields(reader), tensors, factors


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk", "yarn", "dprope"])
def test_a_checkpoint_folder_as_gguf_runs_its_own_rope_and_weights(tmp_path, scaling):
    """The weights and tokenizer through transformers' own GGUF reader (it reads no scaling keys and
    no rope_freqs, so it must give the unscaled model, or ntk's base, exactly); the RoPE read from
    the keys as llama.cpp reads them, against the rotary module transformers builds for the folder."""
    import torch
    from conftest import REPO
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ropestretch.rope.export import apply_to_checkpoint

    base = f"{REPO}/models/tiny-llama-256"
    scaled = scale(load_rope_config(base), scaling, 1024)
    folder = apply_to_checkpoint(base, tmp_path / "applied", scaled)
    out = tmp_path / "m.gguf"
    code, text, err = run_cli("apply", "--model", base, "--scaling", scaling, "--target", 1024, "--out", out,
                              "--type", "f32")
    assert code == 0 and text.startswith(f"wrote {out}: 38 tensors as f32"), err
    values, tensors, factors = gguf_values(out)
    assert values["llama.context_length"] == 1024 and values["tokenizer.ggml.pre"] == "smollm"
    assert ("rope_freqs.weight" in tensors) == (scaling == "dprope")

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rotary = model.model.rotary_emb
    freqs, attention = llama_cpp_frequencies(values, factors, rotary.inv_freq.numel())
    np.testing.assert_allclose(freqs, rotary.inv_freq.double().numpy(), rtol=1e-5)
    assert attention == pytest.approx(float(rotary.attention_scaling), rel=1e-5)

    read = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    same = folder if scaling in ("none", "ntk") else base
    reference = AutoModelForCausalLM.from_pretrained(same, dtype=torch.float32).eval()
    ids = torch.randint(3, 500, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(read(ids).logits, reference(ids).logits)
    tok, gguf_tok = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    text = "In 2024, x = f(3.14159); don't stop:\n\tnaive cafe"
    assert gguf_tok(text)["input_ids"] == tok(text)["input_ids"]
    assert values["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert values["tokenizer.chat_template"] == tok.chat_template


def test_gguf_q8_0_and_f16_hold_the_weights_to_their_precision(tmp_path):
    import gguf
    import torch
    from conftest import REPO
    from safetensors.torch import load_file

    base = f"{REPO}/models/tiny-llama-256"
    weights = load_file(f"{base}/model.safetensors")
    for kind in ("q8_0", "f16"):
        out = tmp_path / f"{kind}.gguf"
        code, text, err = run_cli("gguf", "--model", base, "--out", out, "--type", kind)
        assert code == 0, err
        _, tensors, _ = gguf_values(out)
        t = tensors["blk.0.attn_v.weight"]
        assert t.tensor_type.name == kind.upper()
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.data.shape[0], -1)
        w = weights["model.layers.0.self_attn.v_proj.weight"].to(torch.float32).numpy()
        step = np.abs(w).max() / 127 if kind == "q8_0" else np.abs(w).max() / 1024
        assert np.abs(back - w).max() <= step and not np.array_equal(back, w)
        assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


def test_gguf_of_llama_3_1_puts_its_rope_in_rope_freqs(tmp_path):
    """Llama 3.1's llama3 RoPE, and dprope composed on top of it: per-pair divisors whose frequencies
    are transformers' own; yarn on top needs an attention factor with them, which llama.cpp lacks."""
    import torch
    from tiny_models import build
    from transformers import AutoModelForCausalLM

    from ropestretch.rope.export import apply_to_checkpoint

    base = build("llama-3.1-8b", tmp_path / "llama31", "hub")
    rope = load_rope_config(base)
    for name, folder in (("llama3", base),
                         ("dprope", apply_to_checkpoint(base, tmp_path / "dprope", scale(rope, "dprope", 4 * rope.window)))):
        out = tmp_path / f"{name}.gguf"
        code, _, err = run_cli("gguf", "--model", folder, "--out", out, "--type", "f32")
        assert code == 0, err
        values, _, factors = gguf_values(out)
        assert factors is not None and factors.max() >= 8  # llama3's low-frequency divisor, at least
        rotary = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).model.rotary_emb
        freqs, attention = llama_cpp_frequencies(values, factors, rotary.inv_freq.numel())
        np.testing.assert_allclose(freqs, rotary.inv_freq.double().numpy(), rtol=1e-5)
        assert float(rotary.attention_scaling) == pytest.approx(attention)
    assert_one_line_error(run_cli("apply", "--model", base, "--scaling", "yarn", "--target", 4 * rope.window,
                                  "--out", tmp_path / "y.gguf"), "applies only with its own yarn")


def test_gguf_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_llama_dir, tiny_lm_dir):
    from tiny_models import build

    qwen = build("qwen2.5-7b", tmp_path / "qwen", "hub")
    assert_one_line_error(run_cli("gguf", "--model", qwen, "--out", tmp_path / "q.gguf"), "is qwen2")
    assert_one_line_error(run_cli("gguf", "--model", tiny_llama_dir, "--out", tmp_path / "t.gguf"),
                          "has no tokenizer.json")
    assert_one_line_error(run_cli("apply", "--model", tiny_lm_dir, "--scaling", "dynamic", "--target", 256,
                                  "--out", tmp_path / "new" / "d.gguf"), "no dynamic NTK")  # no folder left behind
    assert_one_line_error(run_cli("gguf", "--model", tiny_lm_dir, "--out", tiny_lm_dir / "x.gguf"), "inside the model")
    assert_one_line_error(run_cli("gguf", "--model", tiny_lm_dir, "--out", tmp_path / "x.bin"), "takes a .gguf")
    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"mine")
    assert_one_line_error(run_cli("gguf", "--model", tiny_lm_dir, "--out", taken), "already exists")
    assert taken.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen", "taken.gguf"]


def test_gguf_refuses_what_llama_cpp_would_run_otherwise(tmp_path, tiny_lm_dir):
    """Yarn betas llama.cpp's llama architecture does not read; longrope factors that switch with the
    length; a file that appears while it is written is left alone."""
    from transformers import LlamaConfig

    from ropestretch.errors import UsageError
    from ropestretch.gguf.keys import checkpoint_rope
    from ropestretch.gguf.write import _publish

    assert_one_line_error(run_cli("apply", "--model", tiny_lm_dir, "--scaling", "yarn", "--target", 256,
                                  "--beta-fast", 8, "--out", tmp_path / "y.gguf"), "runs 32 and 1")
    pairs = 8
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256, rope_scaling={
        "rope_type": "longrope", "short_factor": [1.0] * pairs, "long_factor": [4.0] * pairs,
        "original_max_position_embeddings": 64, "factor": 4.0})
    with pytest.raises(UsageError, match="switches from its short to its long factors"):
        checkpoint_rope(config)
    tmp, dst = tmp_path / "part", tmp_path / "dst.gguf"
    tmp.write_bytes(b"new")
    dst.write_bytes(b"mine")
    with pytest.raises(UsageError, match="appeared while it was being written"):
        _publish(tmp, dst)
    assert dst.read_bytes() == b"mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".gguf") and p.name != "dst.gguf"]
