"""Evaluation: task generation, scoring, prefix reuse, perplexity, the run folder, the report, bad input."""

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from clihelp import assert_one_line_error, run_cli
from ropestretch import UsageError
from ropestretch.data import tasks
from ropestretch.eval import Evaluator, RunStore, run_needle, run_ppl
from ropestretch.eval.prefill import sequence_nll as nll_sum
from ropestretch.eval.prefill import crop_to
from ropestretch.eval.retrieval import cell_rng


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    from ropestretch.eval import load_for_eval

    return load_for_eval(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def haystack(lm):
    from ropestretch.data import builtin_documents

    return tasks.Haystack(lm[1], builtin_documents(max_docs=100)[:20])


def test_tasks_exact_lengths_and_answers(lm, haystack):
    tok = lm[1]
    rng = np.random.default_rng(0)
    for depth in (0, 33, 100):
        s = tasks.passkey(tok, haystack, 300, depth, rng)
        assert len(s.prompt_ids) == 300 and len(s.answer) == 5
        text = tok.decode(s.prompt_ids)
        assert f"The pass key is {s.answer}." in text and text.endswith("The pass key is")
        assert abs(s.info["needle_at"] - depth / 100) < 0.2  # snapped to a sentence boundary near the depth
    s = tasks.lines(tok, 400, rng, position=0.0)
    assert f"REGISTER_CONTENT is <{s.answer}>" in tok.decode(s.prompt_ids) and s.info["index"] == 0
    s = tasks.kv(tok, 1200, 1.0, rng)
    text = tok.decode(s.prompt_ids)
    assert s.info["index"] == s.info["pairs"] - 1 and f'": "{s.answer}"' in text
    rng = np.random.default_rng(1)
    first, line = tasks.passkey(tok, haystack, 300, 50, rng), tasks.lines(tok, 400, rng)
    needle, pairs = tasks.needle(tok, haystack, 300, 50, rng), tasks.kv(tok, 1200, 0.5, rng)
    assert first.match("12345", " 12345. and more 999") and not first.match("12345", " 1234 5")
    assert not line.match("12", "x 123 12") and line.match("12", "x 12 3")  # the first integer
    assert needle.match("1234567", "is 1234567.") and pairs.match("ab-cd", 'x "ab-cd"')  # anywhere


def test_lines_with_several_questions_answers_each_from_the_records(lm):
    tok = lm[1]
    s = tasks.lines(tok, 400, np.random.default_rng(3), questions=3)
    text = tok.decode(s.prompt_ids + s.answer_ids)
    asked = re.findall(r"The REGISTER_CONTENT in line (\S+) is (\d+)", text)
    records = dict(re.findall(r"line (\S+): REGISTER_CONTENT is <(\d+)>", text))
    assert len(asked) == 3 and len({name for name, _ in asked}) == 3
    assert all(records[name] == value for name, value in asked) and asked[-1][1] == s.answer
    assert len(s.prompt_ids) + len(s.answer_ids) <= 400
    with pytest.raises(UsageError, match="questions"):
        tasks.lines(tok, 400, np.random.default_rng(3), questions=0)


def test_needle_needs_room_for_a_haystack(lm, haystack):
    tok = lm[1]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    exact = len(ids(" The pass key is 12345. Remember it. 12345 is the pass key.")) + len(
        ids(" What is the pass key? The pass key is"))
    assert len(tasks.passkey(tok, haystack, exact + 1, 50, np.random.default_rng(0)).prompt_ids) == exact + 1
    with pytest.raises(UsageError, match="too short"):
        tasks.passkey(tok, haystack, exact, 50, np.random.default_rng(0))


def test_haystack_repeats_with_a_warning(lm):
    small = tasks.Haystack(lm[1], ["A tiny text. It has two sentences."])
    with pytest.warns(UserWarning, match="repeated"):
        ids, _ = small.fill(100, np.random.default_rng(0))
    assert len(ids) == 100


@pytest.mark.parametrize("bad,message", [(-1, "depth"), (101, "depth")])
def test_bad_depth(lm, haystack, bad, message):
    with pytest.raises(UsageError, match=message):
        tasks.passkey(lm[1], haystack, 300, bad, np.random.default_rng(0))


def test_cache_continuation_equals_full_forward(lm):
    """What prefix reuse rests on: keys and values of a prefix, cropped, continued."""
    from transformers import DynamicCache

    from ropestretch.eval.prefill import cache_kwargs

    model = lm[0]
    ids = torch.randint(3, 300, (2, 120))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :100], use_cache=True, **cache_kwargs(model, cache))
        crop_to(cache, 70)
        assert cache.get_seq_length() == 70
        tail = model(input_ids=ids[:, 70:], use_cache=True, **cache_kwargs(model, cache)).logits
    torch.testing.assert_close(tail, full[:, 70:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scoring", ["forced", "generate"])
def test_needle_prefix_reuse_matches_from_scratch(lm, haystack, tmp_path, scoring):
    """The same samples, right or wrong alike, with the same answer log-likelihoods and prompts."""
    model, tok = lm
    ev = Evaluator(model, tok, scoring, batch_size=4, haystack=haystack)
    a = run_needle(ev, RunStore(tmp_path / "a", "needle", {}), [200], [0, 40, 100], 4, seed=1, reuse_prefix=True)
    b = run_needle(ev, RunStore(tmp_path / "b", "needle", {}), [200], [0, 40, 100], 4, seed=1, reuse_prefix=False)
    assert [r["correct"] for r in a] == [r["correct"] for r in b]
    for ra, rb in zip(a, b):
        assert [(s["i"], s["correct"], s["prompt"], s["tokens"]) for s in ra["samples"]] == \
            [(s["i"], s["correct"], s["prompt"], s["tokens"]) for s in rb["samples"]]
        assert [s["logprob"] for s in ra["samples"]] == pytest.approx([s["logprob"] for s in rb["samples"]], abs=1e-3)
        assert ra["seed"] == 1 and len({s["prompt"] for s in ra["samples"]}) == 4


def assert_scores_are_the_models_own(model, tok, samples):
    """Per sample, the gold answer's log-likelihood equals one plain forward over prompt + answer,
    under forced and generate scoring alike; and scoring the answer first leaves generation as it
    is without (the same text as a plain ``generate`` with the sample's own budget, however the
    samples are batched)."""
    from ropestretch.eval.scoring import forced_scores, generated_scores

    pad = tok.pad_token_id
    forced = forced_scores(model, samples, pad)
    generated, texts = generated_scores(model, tok, samples, pad=pad)
    for s, f, g, text in zip(samples, forced, generated, texts):
        ids = torch.tensor([s.prompt_ids + s.answer_ids])
        p, a = len(s.prompt_ids), torch.tensor(s.answer_ids)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, p - 1:-1].float(), -1)
            plain = model.generate(input_ids=ids[:, :p], attention_mask=torch.ones(1, p, dtype=torch.long),
                                   max_new_tokens=len(a) + 4, do_sample=False, pad_token_id=pad,
                                   eos_token_id=tok.eos_token_id)
        reference = float(logp[torch.arange(len(a)), a].sum())
        assert f.logprob == pytest.approx(reference, abs=1e-4) and g.logprob == pytest.approx(reference, abs=1e-4)
        assert f.tokens == g.tokens == len(a) and f.correct == bool((logp.argmax(-1) == a).all())
        assert text == tok.decode(plain[0, p:], skip_special_tokens=True)
    assert len({f.logprob for f in forced}) == len(samples)  # not one constant


def test_answer_loglik_is_the_models_own_under_both_scorings(lm, haystack):
    model, tok = lm
    rng = np.random.default_rng(0)
    samples = [tasks.passkey(tok, haystack, 150, d, rng) for d in (0, 50, 100)] + [tasks.needle(tok, haystack, 120, 30, rng)]
    assert_scores_are_the_models_own(model, tok, samples)


def test_needle_samples_draw_their_own_haystack_and_key(lm, haystack):
    from ropestretch.eval.retrieval import needle_prompts

    model, tok = lm
    draws = needle_prompts(Evaluator(model, tok, haystack=haystack), 200, 8, np.random.default_rng(0))
    assert len({tuple(d.context) for d in draws}) == 8 and len({d.answer for d in draws}) == 8
    cities = set()
    for d in draws:
        prompt = d.at(50).prompt_ids
        text = tok.decode(prompt)
        city = re.search(r"What is the magic number of (.+)\? The magic number of \1 is$", text).group(1)
        assert f"The magic number of {city} is {d.answer}." in text and len(prompt) == 200
        cities.add(city)
    assert len(cities) > 1


def test_perplexity_counts_only_scored_tokens(lm, tmp_path):
    model, tok = lm
    ids = torch.randint(3, 300, (1, 50))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    logp = torch.log_softmax(logits[0, :-1].double(), -1)
    nll = -logp[torch.arange(49), ids[0, 1:]]
    total, count = nll_sum(model, ids)
    assert count == 49 and total == pytest.approx(float(nll.sum()), rel=1e-4)
    total, count = nll_sum(model, ids, scored_from=30)
    assert count == 19 and total == pytest.approx(float(nll[30:].sum()), rel=1e-4)
    # sliding window: every token of the span scored exactly once
    stream = torch.randint(3, 300, (400,)).tolist()
    ev = Evaluator(model, tok, batch_size=2)
    [rec] = run_ppl(ev, RunStore(tmp_path / "p", "ppl", {}), stream, [64], samples=3, seed=0, mode="sliding", stride=16)
    assert rec["tokens"] == 3 * 64 - 1 and math.isclose(rec["ppl"], math.exp(rec["nll"]))
    [rec] = run_ppl(ev, RunStore(tmp_path / "q", "ppl", {}), stream, [64], samples=3, seed=0)
    assert rec["tokens"] == 3 * 63
    # truncate: each window's per-token NLL, batched by two, as the window scored alone
    starts = cell_rng(0, "ppl", 64).integers(0, len(stream) - 64, 3)
    alone = [nll_sum(model, torch.tensor([stream[s:s + 64]])) for s in starts]
    assert rec["windows"] == pytest.approx([t / c for t, c in alone], rel=1e-4)
    assert rec["nll"] == pytest.approx(sum(t for t, _ in alone) / (3 * 63), rel=1e-4)


def test_run_folder_skips_finished_cells_and_refuses_other_arguments(tmp_path):
    store = RunStore(tmp_path / "run", "passkey", {"lengths": [64]})
    store.add({"length": 64, "depth": 0}, accuracy=1.0)
    with open(tmp_path / "run" / "results.jsonl", "a") as fh:
        fh.write('{"test": "passkey", "cell": {"len')  # a line cut by a kill
    again = RunStore(tmp_path / "run", "passkey", {"lengths": [64]})
    assert again.finished({"length": 64, "depth": 0}) and not again.finished({"length": 64, "depth": 50})
    RunStore(tmp_path / "run", "ppl", {"lengths": [64]})  # another test, same folder: fine
    with pytest.raises(UsageError, match="different arguments"):
        RunStore(tmp_path / "run", "passkey", {"lengths": [128]})


def test_eval_cli_resume_report_and_bad_input(tiny_lm_dir, tmp_path):
    run = tmp_path / "run"
    common = ["--model", tiny_lm_dir, "--out", run, "--no-progress"]
    legacy = ["--prompt", "legacy"]  # this tokenizer spells the standard instructions in more than 128 tokens
    code, out, err = run_cli("eval", "passkey", *common, *legacy, "--lengths", "128,256", "--depths", "0,100",
                             "--samples", 2)
    assert code == 0, err
    lines = (run / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    code, out, err = run_cli("eval", "passkey", *common, *legacy, "--lengths", "128,256", "--depths", "0,100",
                             "--samples", 2)
    assert code == 0 and (run / "results.jsonl").read_text().splitlines() == lines  # nothing redone
    assert run_cli("eval", "ppl", *common, "--lengths", "64,256", "--samples", 2)[0] == 0
    assert run_cli("eval", "kv", *common, "--lengths", "900", "--samples", 1, "--positions", "0,1")[0] == 0
    assert run_cli("eval", "lines", *common, "--lengths", "700", "--samples", 2, "--scoring", "generate")[0] == 0
    assert run_cli("eval", "needle", *common, *legacy, "--lengths", "128", "--depths", "0,50", "--samples", 2)[0] == 0
    code, out, err = run_cli("report", run)
    assert code == 0, err
    report = (run / "report.md").read_text()
    for title in ("Passkey", "Needle", "LongChat-Lines", "Key-value", "Perplexity"):
        assert title in report
    for png in ("needle-run.png", "kv-by-position.png", "ppl-vs-length.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    # perplexity with its interval over the windows: exp of the t interval of their mean NLL
    [ppl64] = [r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())
               if r["test"] == "ppl" and r["cell"]["length"] == 64]
    w = np.array(ppl64["windows"])
    half = stats.t.ppf(0.975, len(w) - 1) * w.std(ddof=1) / math.sqrt(len(w))
    assert f"{math.exp(w.mean()):.2f} [{math.exp(w.mean() - half):.2f}-{math.exp(w.mean() + half):.2f}], n = 2" in report
    # bad input: one line, exit 2, existing results untouched
    before = (run / "results.jsonl").read_text()
    assert_one_line_error(run_cli("eval", "passkey", *common, *legacy, "--lengths", "128", "--depths", "0,100",
                                  "--samples", 2), "different arguments")
    assert_one_line_error(run_cli("eval", "passkey", *common, "--prompt", "base", "--lengths", "128,256",
                                  "--depths", "0,100", "--samples", 2), "different arguments (differs in: prompt)")
    assert_one_line_error(run_cli("eval", "passkey", *common, "--lengths", "0,64"), "positive")
    assert_one_line_error(run_cli("eval", "passkey", *common, "--lengths", "-5"), "positive")
    assert_one_line_error(run_cli("eval", "needle", *common, "--depths", "0,120"), "[0, 100]")
    assert_one_line_error(run_cli("eval", "ppl", "--model", tmp_path / "nope", "--out", tmp_path / "r2",
                                  "--lengths", "64"), "no such model folder, GGUF file or bundled model")
    # without --lengths too: the missing folder is named, not taken for a hub id that needs --lengths
    assert_one_line_error(run_cli("eval", "ppl", "--model", tmp_path / "nope", "--out", tmp_path / "r2"),
                          "no such model folder")
    assert_one_line_error(run_cli("eval", "ppl", *common, "--lengths", "64", "--device", "cuda"), "no CUDA device")
    assert_one_line_error(run_cli("eval", "ppl", *common, "--lengths", "64", "--dtype", "fp8"), "--dtype must be")
    assert not (tmp_path / "r2").exists()
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((tiny_lm_dir / "config.json").read_text())
    assert_one_line_error(run_cli("eval", "ppl", "--model", weightless, "--out", tmp_path / "r4",
                                  "--lengths", "64"), "cannot load")
    assert_one_line_error(run_cli("eval", "ppl", "--model", tiny_lm_dir, "--out", tmp_path / "r3",
                                  "--lengths", "64", "--text", tmp_path / "missing.txt"), "no such text")
    assert (run / "results.jsonl").read_text() == before
    assert_one_line_error(run_cli("report", tmp_path / "nothing"), "not an eval run folder")


def test_lm_eval_local_task(tiny_lm_dir, tmp_path):
    pytest.importorskip("lm_eval")
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    data = tasks_dir / "copy.jsonl"
    data.write_text("".join(json.dumps({"question": f"Say {w}:", "answer": f" {w}"}) + "\n"
                            for w in ["the", "of", "and", "to"]))
    (tasks_dir / "tiny_copy.yaml").write_text(
        "task: tiny_copy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n")
    out = tmp_path / "lm"
    code, stdout, err = run_cli("eval", "lm-eval", "--model", tiny_lm_dir, "--out", out, "--tasks", "tiny_copy",
                                "--include-path", tasks_dir, "--max-length", 256)
    assert code == 0, err[-3000:]
    summary = json.loads((out / "lm-eval.json").read_text())
    assert "tiny_copy" in summary["results"] and 0 <= summary["results"]["tiny_copy"]["acc,none"] <= 1
    assert_one_line_error(run_cli("eval", "lm-eval", "--model", tiny_lm_dir, "--out", out, "--tasks", "no_such_task",
                                  "--include-path", tasks_dir), "unknown lm-eval tasks")


def test_scoring_crops_the_cache_of_a_sliding_window_model(tiny_lm_dir, haystack, tmp_path):
    """Local attention (Mistral's window, Gemma's sliding layers): scoring the answer and cropping the
    cache back, and the needle sweep's shared prefix, give what a fresh prefill gives."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from conftest import tiny_llama_config
    from ropestretch.eval.prefill import new_cache

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.manual_seed(0)
    settings = {k: v for k, v in tiny_llama_config(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                                   eos_token_id=tok.eos_token_id).items()
                if k not in ("architectures", "model_type")}
    model = MistralForCausalLM(MistralConfig(**settings, sliding_window=32)).eval()
    assert any(type(layer).__name__ == "DynamicSlidingWindowLayer" for layer in new_cache(model).layers)
    rng = np.random.default_rng(0)
    assert_scores_are_the_models_own(model, tok, [tasks.passkey(tok, haystack, 150, d, rng) for d in (0, 50, 100)])
    for scoring in ("generate", "forced"):
        ev = Evaluator(model, tok, scoring, batch_size=2, haystack=haystack)
        a = run_needle(ev, RunStore(tmp_path / f"a{scoring}", "needle", {}), [150], [0, 50, 100], 2, seed=1)
        b = run_needle(ev, RunStore(tmp_path / f"b{scoring}", "needle", {}), [150], [0, 50, 100], 2, seed=1,
                       reuse_prefix=False)
        for ra, rb in zip(a, b):
            assert [s["correct"] for s in ra["samples"]] == [s["correct"] for s in rb["samples"]]
            assert [s["logprob"] for s in ra["samples"]] == pytest.approx([s["logprob"] for s in rb["samples"]], abs=1e-3)
