"""RULER's synthetic tasks: each generator against RULER's definitions (hsiehjackson/RULER at e40fae1,
``scripts/synthetic.yaml`` and ``scripts/data/synthetic/*.py``), the scorer against RULER's
``string_match_all`` / ``string_match_part`` on hand-made predictions, and the suite in the registry,
the CLI, the store and the report."""

import json
import re
from collections import Counter
from functools import cache

import numpy as np
import pytest

from clihelp import assert_one_line_error, run_cli
from ropestretch.data import ruler

NAME = "smollm2-135m-instruct"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from ropestretch.checkpoints import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(NAME))


@pytest.fixture(scope="module")
def chat(tok):
    from ropestretch.data.prompts import prompt_format

    return prompt_format(tok, "chat")


@cache
def essay():
    return ruler.essay_words()


def make(tok, name, length=2048, seed=0, form=None):
    s = ruler.sample(name, tok, length, np.random.default_rng(seed), form, essay())
    return s, tok.decode(s.prompt_ids)


NEEDLE = re.compile(r"One of the special magic (\w+) for (.+?) is: (\S+)\.")  # a few keys hold a space


def needles(text):
    return NEEDLE.findall(text)


def test_a_prompt_and_its_generation_budget_fill_the_length(tok):
    """RULER's max_seq_length holds the prompt and tokens_to_generate (fwe: the prompt alone); the
    haystack is the largest that fits, so the prompt is within one haystack unit of it."""
    for name, spec in ruler.RULER_TASKS.items():
        for length in (1024, 3000):
            s, _ = make(tok, name, length)
            room = length - (0 if name == "fwe" else spec.budget)
            assert len(s.prompt_ids) <= room, name
            assert len(s.prompt_ids) >= room - 100, (name, len(s.prompt_ids), room)  # one unit: a UUID needle at most
            assert s.budget == {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}[spec.kind]


def test_niah_single_1_one_number_needle_in_repeated_noise_singular_wording(tok):
    s, text = make(tok, "niah_single_1")
    assert text.startswith("A special magic number is hidden within the following text. Make sure to memorize it. "
                           "I will quiz you about the number afterwards.\n")
    assert text.endswith(f" The special magic number for {needles(text)[0][1]} mentioned in the provided text is")
    [(kind, key, value)] = needles(text)
    assert kind == "numbers"  # the needle keeps the plural, as RULER's does
    assert re.fullmatch(r"\d{7}", value) and s.references == (value,)
    adjective, noun = key.split("-", 1)
    assert adjective in ruler.wordlist("adjectivelist") and noun in ruler.wordlist("nounlist")
    lines = text.split("\n")
    assert {line for line in lines[1:-1] if not NEEDLE.search(line)} == {NOISE}
    assert f"What is the special magic number for {key} mentioned in the provided text?" in text
    assert text.count(value) == 1


@pytest.mark.parametrize("name, keys, values, asked, haystack", [
    ("niah_single_2", 1, 1, 1, "essay"), ("niah_single_3", 1, 1, 1, "essay"), ("niah_multikey_1", 4, 1, 1, "essay"),
    ("niah_multivalue", 1, 4, 1, "essay"), ("niah_multiquery", 4, 1, 4, "essay")])
def test_niah_in_an_essay_counts_placement_and_wording(tok, name, keys, values, asked, haystack):
    spec = ruler.RULER_TASKS[name]
    s, text = make(tok, name, 4096, seed=3)
    found = needles(text)
    assert len(found) == keys * values and len({k for _, k, _ in found}) == keys
    assert len(s.references) == asked * values and all(text.count(v) == 1 for v in s.references)
    by_key = {}
    for _, k, v in found:
        by_key.setdefault(k, []).append(v)
    plural = asked * values > 1
    head = "Some special magic {0}s are hidden" if plural else "A special magic {0} is hidden"
    kind = spec.type_v[:-1]
    assert text.startswith(head.format(kind))
    query = re.search(r"What (?:are all|is) the special magic \w+ for (.+) mentioned in the provided text\?", text)[1]
    queried = query.replace(", and ", ", ").split(", ") if asked > 1 else [query]
    assert len(queried) == asked and set(queried) <= set(by_key)
    assert [sorted(s.references[i * values:(i + 1) * values]) for i in range(asked)] == \
        [sorted(by_key[k]) for k in queried]  # in the order asked
    if spec.type_v == "uuids":
        assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", v)
                   for v in s.references)
    # the essay from its start, needles at distinct depths among RULER's 40
    assert " ".join(essay()[:40])[:200] in text
    assert len(set(s.info["needle_at"])) == len(found)
    assert set(round(100 * p) for p in s.info["needle_at"]) <= set(ruler.ESSAY_DEPTHS)


@pytest.mark.parametrize("name", ["niah_multikey_2", "niah_multikey_3"])
def test_niah_among_distractor_needles(tok, name):
    s, text = make(tok, name, 4096, seed=1)
    lines = text.split("\n")[1:-1]
    assert all(NEEDLE.fullmatch(line) for line in lines)  # the haystack is needles, nothing else
    key = re.search(r"magic (?:number|uuid) for (.+?) mentioned in the provided text\?", text)[1]
    [value] = s.references
    assert [v for _, k, v in needles(text) if k == key] == [value] and text.count(value) == 1
    if name == "niah_multikey_3":
        assert all(re.fullmatch(r"[0-9a-f-]{36}", k) and re.fullmatch(r"[0-9a-f-]{36}", v) for _, k, v in needles(text))
    else:
        assert all(re.fullmatch(r"\d{7}", v) and "-" in k for _, k, v in needles(text))
    assert len(lines) > 40


def test_vt_one_chain_of_four_hops_after_rulers_one_shot_example(tok):
    s, text = make(tok, "vt", 4096, seed=2)
    value = re.search(r"assigned the value (\d{5}) in the text above\.", text)[1]
    statements = re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d{5})", text)
    assert [n for n, _ in statements] == list(s.references) and len(s.references) == 5
    assert statements[0][1] == value  # the chain in order: the value, then each variable from the one before
    assert [src for _, src in statements[1:]] == [f"VAR {n}" for n in s.references[:-1]]
    assert text.endswith(f" Answer: According to the chain(s) of variable assignment in the text above, 5 variables "
                         f"are assgined the value {value}, they are: ")
    # the example: 3-letter names, its question's last word dropped (RULER's own wording), its answer after two spaces
    example = re.search(r"value (\d{5}) in the text Answer: .*?they are:  ((?:[A-Z]{3} ){4}[A-Z]{3})\n\n\n\nMemorize",
                        text, re.S)
    assert example, text[:1500]
    assert text.startswith(" Memorize and track the chain(s) of variable assignment")
    assert NOISE in text


def test_cwe_ten_words_thirty_times_the_rest_three(tok):
    s, text = make(tok, "cwe", 4096, seed=4)
    shot, main = text.split("\nBelow is a numbered list of words.")
    main_list = re.search(r"others\. Memorize the ones that appear most often\.\n(.*)\nQuestion:", main, re.S)[1]
    items = re.findall(r"(\d+)\. (\S+)", main_list)
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
    counts = Counter(w for _, w in items)
    assert {w for w, c in counts.items() if c == 30} == set(s.references) and len(s.references) == 10
    assert set(counts.values()) == {30, 3}
    assert set(counts) <= set(ruler.common_words())
    # the one-shot example: 40 words, 10 of them 10 times, its answer right after "are:"
    example_list = re.search(r"often\.\n(.*)\nQuestion:", shot, re.S)[1]
    example_counts = Counter(re.findall(r"\d+\. (\S+)", example_list))
    assert sorted(example_counts.values()) == [3] * 30 + [10] * 10
    answer = re.search(r"appear most often in the list are:(1\. .*)", shot)[1]
    assert [w for _, w in re.findall(r"(\d+)\. (\S+)", answer)] == \
        [w for w, c in example_counts.items() if c == 10] or set(re.findall(r"\d+\. (\S+)", answer)) == \
        {w for w, c in example_counts.items() if c == 10}
    small = make(tok, "cwe", 2048, seed=4)[1].split("\nBelow is a numbered list of words.")[1]
    assert set(Counter(re.findall(r"\d+\. (\S+)", small.split("Question:")[0])).values()) == {6, 1}  # below 4096


def test_fwe_zipf_counts_and_the_second_to_fourth_words(tok):
    from scipy.special import zeta

    s, text = make(tok, "fwe", 4096, seed=5)
    coded = re.search(r"coded words\. (.*)\nQuestion:", text, re.S)[1].split(" ")
    counts = Counter(coded)
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and list(s.references) == ranked[1:4]
    n = s.info["haystack"]
    for rank, word in enumerate(ranked[:6], 1):
        assert counts[word] == int(n * rank ** -2.0 / zeta(2.0))
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])
    assert len(ranked) <= 4096 // 50


def test_chat_puts_the_task_in_the_user_turn_and_the_answer_prefix_after_the_assistant_header(tok, chat):
    s, text = make(tok, "niah_single_1", 2048, form=chat)
    assert s.prompt_ids[:len(chat.user_prefix)] == list(chat.user_prefix)
    assert "<|im_start|>assistant\n The special magic number for" in text


def test_the_same_seed_gives_the_same_prompts_and_another_seed_others(tok):
    a, b, c = (make(tok, "niah_multikey_2", 2048, seed=s)[0] for s in (7, 7, 8))
    assert a.prompt_ids == b.prompt_ids and a.references == b.references and a.prompt_ids != c.prompt_ids


def test_the_scorer_is_rulers_string_match_all_and_part():
    """Hand-made predictions, scored as RULER's evaluate.py scores them: case-insensitive substring,
    control characters to newlines; all = the share of references found, part = any."""
    refs = ["Alpha-Beta", "1234567", "gamma"]
    assert ruler.match_all(refs, "alpha-beta, 1234567 and GAMMA") == 1.0
    assert ruler.match_all(refs, "  1234567 ") == pytest.approx(1 / 3)
    assert ruler.match_all(refs, "12345 67") == 0.0
    assert ruler.match_all(refs, "123\x004567") == 0.0  # a control character splits the number, as in RULER
    assert ruler.match_part(refs, "only gamma") == 1.0 and ruler.match_part(refs, "none") == 0.0
    assert ruler.clean_prediction(" a\tb\x01c ") == "a\nb\nc"
    from ropestretch.data.tasks import TaskSample

    sample = TaskSample("vt", [1], "A, B", [2], references=("ABC", "DEF"), budget=30)
    assert sample.judge("abc def") == (True, 1.0) and sample.judge("ABC") == (False, 0.5)
    assert sample.max_new_tokens == 30


def test_task_selection():
    assert ruler.select("all") == list(ruler.RULER_TASKS)
    assert ruler.select("niah") == [n for n in ruler.RULER_TASKS if n.startswith("niah")]
    assert ruler.select("fwe,niah_single_1,fwe") == ["niah_single_1", "fwe"]  # RULER's order, once each
    with pytest.raises(Exception, match="unknown RULER task 'niah_single_9'"):
        ruler.select("niah_single_9")


def test_eval_ruler_runs_the_suite_into_one_folder_and_the_report_scores_it(tiny_lm_dir, tmp_path):
    from ropestretch.eval.tasks import TASKS
    from ropestretch.report import effective_length

    code, out, _ = run_cli("eval", "--help")
    assert code == 0 and "ruler" in out and "niah_single_1" not in out  # the suite's tasks run through it
    code, out, _ = run_cli("eval", "ruler", "--help")
    assert code == 0 and "--tasks" in out and "niah_multiquery" in out and "--depths" not in out
    assert {t.name for t in TASKS.values() if t.suite == "ruler"} == set(ruler.RULER_TASKS)
    run = tmp_path / "r"
    code, out, err = run_cli("eval", "ruler", "--tasks", "niah_single_1,niah_multikey_3", "--model", tiny_lm_dir,
                             "--out", run, "--lengths", "640,768", "--samples", "2", "--prompt", "base",
                             "--no-progress")
    assert code == 0, err
    assert 'niah_multikey_3 {"length": 768}: accuracy 0.00, score 0.0' in out
    recorded = json.loads((run / "eval-args.json").read_text())
    assert set(recorded) == {"niah_single_1", "niah_multikey_3"}
    assert recorded["niah_single_1"]["scoring"] == "generate" and recorded["niah_single_1"]["definition"] == "RULER e40fae1"
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["score"] == 0.0 and len(r["samples"]) == 2 for r in rows)
    assert all("score" in x for r in rows for x in r["samples"])
    # rerun: nothing new; the report: RULER's table and the effective lengths, with the threshold option
    assert run_cli("eval", "ruler", "--tasks", "niah_single_1,niah_multikey_3", "--model", tiny_lm_dir, "--out", run,
                   "--lengths", "640,768", "--samples", "2", "--prompt", "base", "--no-progress")[0] == 0
    assert len((run / "results.jsonl").read_text().splitlines()) == 4
    code, out, err = run_cli("report", run, "--threshold", "50")
    assert code == 0, err
    text = (run / "report.md").read_text()
    assert "## RULER: r" in text and "| length | niah_single_1 | niah_multikey_3 | average |" in text
    assert "| 640 | 0.0 [0-66], n = 2 | 0.0 [0-66], n = 2 |" in text
    assert "at RULER's threshold, 50: none (below it at 640)" in text
    assert "## RULER niah_single_1" not in text  # no per-task section besides the suite's table
    assert_one_line_error(run_cli("report", run, "--threshold", "120"), "--threshold is a score from 0 to 100")
    assert_one_line_error(run_cli("eval", "ruler", "--tasks", "nope", "--model", tiny_lm_dir, "--out", tmp_path / "x"),
                          "unknown RULER task 'nope'")
    assert not (tmp_path / "x").exists()
    assert effective_length({4096: 90.0, 8192: 86.0, 16384: 70.0, 32768: 88.0}, 85.6) == 8192
    assert effective_length({4096: 80.0, 8192: 90.0}, 85.6) is None


def test_every_task_runs_on_the_tiny_base_and_one_length_has_no_nolima_length(tiny_lm_dir, tmp_path):
    run = tmp_path / "all"
    code, out, err = run_cli("eval", "ruler", "--tasks", "all", "--model", tiny_lm_dir, "--out", run,
                             "--lengths", "2048", "--samples", "1", "--prompt", "base", "--no-progress")
    assert code == 0, err
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert sorted(r["test"] for r in rows) == sorted(ruler.RULER_TASKS)
    assert all(0.0 <= r["samples"][0]["score"] <= 1.0 and r["samples"][0]["tokens"] <= 2048 for r in rows)
    assert run_cli("report", run)[0] == 0
    text = (run / "report.md").read_text()
    assert "NoLiMa's, 85% of the model's short-context score: not measured here (the run tested one length" in text


def test_inserted_lines_never_touch_as_rulers_draw_without_replacement():
    """RULER inserts needles and vt's statements at slots drawn by ``random.sample``: distinct, so
    at least one haystack line lies between two of them, whatever the fractions drawn here."""
    units = ["h"] * 10
    for places in ([0.5, 0.5, 0.5], [0.99, 0.99], [0.0, 0.01, 0.02, 0.03], [0.3, 0.7]):
        out = ruler._insert(units, [f"n{i}" for i in range(len(places))], places)
        at = [i for i, u in enumerate(out) if u != "h"]
        assert len(out) == 10 + len(places) and all(b - a >= 2 for a, b in zip(at, at[1:])), (places, out)
        assert [out[i] for i in at] == [f"n{i}" for i in np.argsort(places, kind="stable")]
    assert ruler._insert(units, ["a", "b"], [0.3, 0.7]) == ["h"] * 3 + ["a"] + ["h"] * 4 + ["b"] + ["h"] * 3
    names, _, _ = ruler._chain(np.random.default_rng(0), 1, 20)  # one letter, 21 names: a repeat is certain
    assert len(set(names)) == 21


def test_the_averages_interval_is_stratified_by_task():
    from ropestretch.stats import share_interval, stratified_mean_interval

    mean, low, high = stratified_mean_interval([[1.0] * 10, [0.0] * 10])
    assert mean == 0.5 and low == high == 0.5  # no spread within a task: none in the average either
    mean, low, high = stratified_mean_interval([[1.0, 0.0] * 20, [1.0] * 40])
    assert mean == 0.75 and low < 0.75 < high and high - low < 0.2
    assert share_interval([1, 1, 0, 0])[1:] == pytest.approx((0.15003899, 0.84996101), abs=1e-6)  # Wilson
    assert share_interval([0.5, 0.25, 1.0])[1] >= 0.0
