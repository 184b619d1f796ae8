"""`ropestretch pretrain`: the recipe runs end to end (a few steps) and records its probes."""

import json

from clihelp import assert_one_line_error, run_cli


def test_pretrain_smoke(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    code, _, err = run_cli("pretrain", "--out", out, "--copy-steps", 2, "--mix-steps", 2, "--batch-size", 4,
                           "--no-progress")
    assert code == 0, err
    record = json.loads((out / "pretrain.json").read_text())
    probes = [r["probe"] for r in record["log"] if "probe" in r]
    assert len(probes) == 2 and all(0 <= p["copy_accuracy"] <= 1 for p in probes)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.max_position_embeddings == 256 and len(tok) == model.config.vocab_size == 512
    assert tok.tokenize(" 12345") == ["Ġ", "1", "2", "3", "4", "5"]  # digits one per token
    assert_one_line_error(run_cli("pretrain", "--out", out, "--copy-steps", 2), "not empty")
    assert_one_line_error(run_cli("pretrain", "--out", tmp_path / "x", "--mix", "text=1,video=1"), "unknown mix")
