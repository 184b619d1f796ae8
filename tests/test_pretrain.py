"""`ropestretch pretrain`: the recipe runs end to end (a few steps), records its probes, and reuses
cached phases only when the recipe agrees with them."""

import json

import torch
from safetensors.torch import load_file

from clihelp import assert_one_line_error, run_cli

SMALL = ("--copy-steps", 2, "--mix-steps", 2, "--focus-steps", 2, "--anneal-steps", 2, "--batch-size", 4,
         "--no-progress")


def test_pretrain_smoke(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    code, _, err = run_cli("pretrain", "--out", out, *SMALL)
    assert code == 0, err
    record = json.loads((out / "pretrain.json").read_text())
    probes = [r["probe"] for r in record["log"] if "probe" in r]
    assert len(probes) == 4 and all(0 <= p["copy_accuracy"] <= 1 for p in probes)
    from ropestretch.pretrain import PretrainConfig, parse_mix

    assert record["rows"]["focus"]["lines"] == round(parse_mix(PretrainConfig().focus_mix)["lines"] * 2 * 4)
    assert record["rows"]["anneal"]["needle"] == round(parse_mix(PretrainConfig().anneal_mix)["needle"] * 2 * 4)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.max_position_embeddings == 256 and len(tok) == model.config.vocab_size == 512
    assert tok.tokenize(" 12345") == ["Ġ", "1", "2", "3", "4", "5"]  # digits one per token
    assert len(tok.tokenize(" REGISTER_CONTENT")) <= 3  # the task formats are weighted into the BPE
    assert_one_line_error(run_cli("pretrain", "--out", out, "--copy-steps", 2), "not empty")
    assert_one_line_error(run_cli("pretrain", "--out", tmp_path / "x", "--mix", "text=1,video=1"), "unknown mix")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert_one_line_error(run_cli("pretrain", "--out", a_file, *SMALL), "is a file")
    assert_one_line_error(run_cli("pretrain", "--out", tmp_path / "y", "--cache", a_file, *SMALL), "is a file")
    assert a_file.read_text() == "mine" and not (tmp_path / "y").exists()


def test_cached_phases_are_reused_only_by_an_agreeing_recipe(tmp_path):
    cache = tmp_path / "cache"

    def phases(out):
        return json.loads((out / "pretrain.json").read_text())["log"]

    assert run_cli("pretrain", "--out", tmp_path / "a", "--cache", cache, *SMALL)[0] == 0
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["anneal", "copy", "focus", "mix"]
    # another anneal phase: copy, mix and focus come from the cache (their logs, runtimes included, are a's)
    code, _, err = run_cli("pretrain", "--out", tmp_path / "b", "--cache", cache, *SMALL[:6], "--anneal-steps", 3,
                           *SMALL[8:])
    assert code == 0, err
    a, b = phases(tmp_path / "a"), phases(tmp_path / "b")
    assert [r for r in a if r["phase"] != "anneal"] == [r for r in b if r["phase"] != "anneal"]
    assert [r["step"] for r in b if r["phase"] == "anneal" and "train_runtime" in r] == [3]
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert not all(torch.equal(v, weights_b[k]) for k, v in weights_a.items())
    # another mixed-phase rate: the copy phase is reused, the mixed one (and all after it) trained and kept beside
    assert run_cli("pretrain", "--out", tmp_path / "c", "--cache", cache, *SMALL[:2], "--lr", 0.01, *SMALL[2:])[0] == 0
    names = [p.name.split("-")[0] for p in cache.iterdir()]
    assert [names.count(n) for n in ("copy", "mix", "focus", "anneal")] == [1, 2, 2, 3]


def test_digit_groups_are_single_tokens():
    import pytest

    from ropestretch.data.corpus import builtin_documents, train_tokenizer
    from ropestretch.errors import UsageError

    docs = builtin_documents(max_docs=60)
    tok = train_tokenizer(docs, vocab_size=400, digit_group=2)
    assert tok.tokenize(" 12345") == ["Ġ", "12", "34", "5"]
    assert all(tok.tokenize(f"{i:02d}") == [f"{i:02d}"] for i in range(100))
    text = "line amber-anchor: REGISTER_CONTENT is <90817>\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert train_tokenizer(docs, vocab_size=300).tokenize(" 12345") == ["Ġ", "1", "2", "3", "4", "5"]
    with pytest.raises(UsageError, match="digit_group"):
        train_tokenizer(docs, digit_group=0)
