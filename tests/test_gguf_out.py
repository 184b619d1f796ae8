"""GGUF out: `ropestretch apply` from the bundled SmolLM2 .gguf to a new .gguf for llama.cpp. Every
tensor is copied byte for byte, the RoPE is written in llama.cpp's own keys (or its per-pair
rope_freqs tensor), and what llama.cpp cannot express is one line. That llama.cpp runs these files
at the frequencies transformers computes is `make engines`' check (engines/check.py)."""

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
    from ropestretch.rope.llamacpp import gguf_rope

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
    from ropestretch.rope.llamacpp import gguf_rope

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
    assert_one_line_error(run_cli("apply", "--model", tiny_lm_dir, "--scaling", "yarn", "--target", 256,
                                  "--out", tmp_path / "t.gguf"), "copies a .gguf model")
    other = tiny_gguf(tmp_path / "qwen.gguf", "qwen2")
    assert_one_line_error(run_cli("apply", "--model", other, "--scaling", "yarn", "--target", 32768,
                                  "--out", tmp_path / "q.gguf"), "is qwen2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen.gguf", "taken.gguf"]
