"""The evaluation core: tasks and backends are registry entries that the CLI, the run record, the
report and the pairing read; the sweep is the library's ``ropestretch.eval.run``."""

import json

import pytest

from clihelp import assert_one_line_error, run_cli
from ropestretch.eval.tasks import TASKS, Option, Place, Task, float_list, register_task

LEGACY = ["--prompt", "legacy"]  # the tiny tokenizer spells the standard instructions in more than 128 tokens


def _toy_cells(lengths, o):
    return [{"length": n, "spot": s} for n in lengths for s in o["spots"]]


def _toy_run(ev, store, lengths, samples, seed, o):
    from ropestretch.data import tasks
    from ropestretch.eval.retrieval import sweep

    return sweep(ev, store, _toy_cells(lengths, o), lambda c, rng: tasks.passkey(
        ev.tokenizer, ev.haystack, c["length"], 100 * c["spot"], rng, ev.prompt), samples, seed)


@pytest.fixture
def toy():
    """A test-only task, registered for one test: one entry, nothing else edited."""
    task = register_task(Task(
        "toy", "a test-only task", "Toy retrieval", 2, "retrieval", _toy_cells, _toy_run,
        (Option("spots", lambda: [0.0, 1.0], "where the key goes, 0 to 1", float_list(0, 1, "spots"), "S1,S2"),),
        Place("spot", 100.0, "spots", "spot of the key (%)", "spot"), views=("middle", "by_place"), haystack=True))
    yield task
    TASKS.pop("toy")


def test_a_registered_task_is_in_the_cli_the_store_the_report_and_the_pairing(toy, tiny_lm_dir, tmp_path):
    from ropestretch import eval as evaluation
    from ropestretch.compare import differences, pair_runs, place
    from ropestretch.report import load_run

    code, out, _ = run_cli("eval", "--help")
    assert code == 0 and "toy" in out and "a test-only task" in out
    code, out, _ = run_cli("eval", "toy", "--help")
    assert code == 0 and "--spots" in out and "--depths" not in out
    a, b = tmp_path / "a", tmp_path / "b"
    code, out, err = run_cli("eval", "toy", "--model", tiny_lm_dir, "--out", a, *LEGACY, "--lengths", "128",
                             "--spots", "0,0.5,1", "--samples", "2", "--no-progress")
    assert code == 0, err
    assert 'toy {"length": 128, "spot": 0.5}: accuracy' in out
    recorded = json.loads((a / "eval-args.json").read_text())["toy"]
    assert recorded["spots"] == [0.0, 0.5, 1.0] and recorded["scoring"] == "forced" and recorded["prompt"] == "legacy"
    rows = [json.loads(x) for x in (a / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["backend"].startswith("transformers ") for r in rows)
    # the library's sweep: the same rows, prompt by prompt
    again = evaluation.run("toy", str(tiny_lm_dir), b, lengths=[128], samples=2, prompt="legacy", spots=[0.0, 0.5, 1.0])
    assert [[(s["prompt"], s["correct"]) for s in r["samples"]] for r in again] == \
        [[(s["prompt"], s["correct"]) for s in r["samples"]] for r in rows]
    with pytest.raises(Exception, match="takes no option 'depths'"):
        evaluation.run("toy", str(tiny_lm_dir), tmp_path / "c", lengths=[128], depths=[0.0])
    assert not (tmp_path / "c").exists()
    # the store refuses other options for the same folder
    assert_one_line_error(run_cli("eval", "toy", "--model", tiny_lm_dir, "--out", a, *LEGACY, "--lengths", "128",
                                  "--spots", "0", "--samples", "2"), "differs in: spots")
    # the report: its section, middle band and figure; the pairing: bands by its place
    assert place("toy", {"length": 128, "spot": 0.5}) == 50.0
    code, _, err = run_cli("report", a, b, "--out", tmp_path / "report")
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Toy retrieval" in text and "(all spots)" in text and "Middle spots only (25-75%):" in text
    assert (tmp_path / "report" / "toy-by-spot.png").read_bytes()[:4] == b"\x89PNG"
    assert "### Toy retrieval: `a` - `b`, 6 paired samples" in text
    pairing = pair_runs(load_run(a), load_run(b), "toy")
    assert {d["band"] for d in differences(pairing)} == {"all", "ends", "middle"}
    assert all(d["only_a"] == d["only_b"] == 0 for d in differences(pairing))
    # a row whose place is out of the task's range is named by the report's check
    bad = dict(rows[0], cell={"length": 128, "spot": 2.0})
    (a / "results.jsonl").write_text(json.dumps(bad) + "\n")
    assert_one_line_error(run_cli("report", a), "line 1 has no spot in [0, 1]")


def test_task_names_live_only_in_the_registry():
    """No module of the package outside the registry's entries dispatches on a built-in task's name
    (compares with it, or lists two of them, or keys a dict by one); the training rows' kinds
    (data/, pretrain.py's curriculum) are data that name their tasks (as the study plans do, outside the package).
    The same check finds the dispatches the registry replaced (``if test in ("passkey", "needle")``)."""
    import re
    from pathlib import Path

    names = "passkey|needle|lines|kv|ppl"
    literal = rf"""["']({names})["']"""
    dispatch = re.compile(rf"""[!=]=\s*{literal}|{literal}\s*[!=]=|{literal}\s*:|{literal}\s*,\s*{literal}""")
    src = Path(__file__).resolve().parents[1] / "src" / "ropestretch"
    found = [f"{p.relative_to(src)}:{n}: {line.strip()}" for p in sorted(src.rglob("*.py"))
             if p.relative_to(src).parts[0] not in ("data", "pretrain.py")
             and p.relative_to(src) != Path("eval/tasks.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if dispatch.search(line)]
    assert not found, found
    assert dispatch.search('if test in ("passkey", "needle"):') and dispatch.search('if test == "kv":')


def test_a_registered_backend_runs_the_same_prompts_and_report_pairs_it_with_transformers(tiny_lm_dir, tmp_path):
    from ropestretch.eval.backends import BACKENDS, TransformersBackend, register_backend

    class Mirror(TransformersBackend):
        """The transformers path under another name: another engine, for this test."""

        name = "mirror"
        help = "a test-only backend"

        def version(self):
            return "0.1"

        @classmethod
        def notes(cls, model_dir, max_len):
            return [f"runs this checkpoint its own way up to {max_len} tokens"]

    register_backend(Mirror)
    try:
        common = [*LEGACY, "--model", tiny_lm_dir, "--lengths", "128", "--depths", "0,50,100", "--samples", "2",
                  "--scoring", "generate", "--no-progress"]
        assert run_cli("eval", "needle", *common, "--out", tmp_path / "hf")[0] == 0
        code, _, err = run_cli("eval", "needle", *common, "--backend", "mirror", "--out", tmp_path / "mirror")
        assert code == 0, err
    finally:
        BACKENDS.pop("mirror")
    args = json.loads((tmp_path / "mirror" / "eval-args.json").read_text())["needle"]
    assert args["backend"] == "mirror" and "backend" not in json.loads((tmp_path / "hf" / "eval-args.json").read_text())["needle"]
    rows = [json.loads(x) for x in (tmp_path / "mirror" / "results.jsonl").read_text().splitlines()]
    [note] = {n for r in rows for n in r["engine_notes"]}  # printed, on every row, and said by the report
    assert note.startswith("runs this checkpoint its own way up to 1") and f"note: {note}" in err
    assert "engine_notes" not in args  # not in the arguments a resume compares
    assert {r["backend"] for r in rows} == {"mirror 0.1"}
    code, _, err = run_cli("report", tmp_path / "hf", tmp_path / "mirror", "--out", tmp_path / "report")
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert "### Needle in a haystack: `hf` - `mirror`, 6 paired samples" in text
    assert text.count("| 0 / 0 | 1 | +0.000 [+0.000, +0.000] (t) |") == 3  # every band: the same answers
    assert f"- mirror: {note}" in text and "- hf:" not in text


def test_an_engine_that_is_not_installed_is_one_line_naming_make_engines(tiny_lm_dir, tmp_path):
    import importlib.util

    for backend, module in (("vllm", "vllm"), ("llamacpp", "llama_cpp")):
        if importlib.util.find_spec(module) is not None:
            continue
        assert_one_line_error(run_cli("eval", "needle", "--model", tiny_lm_dir, "--out", tmp_path / backend,
                                      "--backend", backend, "--lengths", "128"), "make engines")
        assert not (tmp_path / backend).exists()


def test_vllm_is_given_room_past_an_unscaled_window(tmp_path):
    """vLLM tabulates RoPE up to the length it derives from the config (NaN past it): an unscaled
    model's table is extended for a prompt that needs more; a scaled export's is left to vLLM's check."""
    from ropestretch.eval.backends import _vllm_length

    config = {"model_type": "llama", "max_position_embeddings": 8192, "rope_theta": 1e5}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _vllm_length(tmp_path, 8000) == {}
    assert _vllm_length(tmp_path, 8256) == {"hf_overrides": {"max_position_embeddings": 8256}}
    config.update(max_position_embeddings=32768, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                               "original_max_position_embeddings": 8192})
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _vllm_length(tmp_path, 32832) == {}  # its scaling's table: vLLM's own length check says what fits


def test_vllm_cpu_kv_space_grows_with_a_longer_run_and_keeps_the_users(monkeypatch):
    """vLLM's CPU KV cache: one sequence's keys and values twice over, in whole GiB. A second, longer
    run in the same process gets a larger one; a value the user set is left alone."""
    from ropestretch.eval import backends

    # SmolLM2-135M's shape: 30 layers, 3 key-value heads of 64 dimensions, fp32 keys and values
    config = {"model_type": "llama", "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
              "hidden_size": 576}
    per_token = 2 * 30 * 3 * 64 * 4
    env = {}
    short = backends.cpu_kv_space(config, 8192, env)
    assert short == "1"  # 2 x 8192 x 46,080 bytes = 0.70 GiB
    monkeypatch.setitem(backends._WROTE_KV_SPACE, "value", short)  # as open() records what it wrote
    env["VLLM_CPU_KVCACHE_SPACE"] = short
    long = backends.cpu_kv_space(config, 65536, env)
    assert int(long) == -(-2 * 65536 * per_token // 2**30) == 6
    assert backends.cpu_kv_space(config, 65536, {"VLLM_CPU_KVCACHE_SPACE": "3"}) is None


def test_the_vllm_backend_names_the_exports_it_runs_differently_from_transformers():
    """docs/engines.md's measured mismatches, said by the evaluation itself: dynamic NTK (vLLM keeps
    the unscaled base) and a length-switching longrope served past its switch (long factors throughout)."""
    from ropestretch.eval.backends import vllm_notes

    base = {"model_type": "llama", "max_position_embeddings": 8192, "rope_theta": 1e5}
    assert vllm_notes(base, 32768) == []
    assert vllm_notes({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, 32768) == []
    dynamic = {**base, "rope_scaling": {"type": "dynamic", "factor": 4.0}}
    assert vllm_notes(dynamic, 8192) == []  # within the window vLLM's unscaled base is transformers' too
    [note] = vllm_notes(dynamic, 8256)
    assert "dynamic" in note and "unscaled base" in note
    switching = {**base, "max_position_embeddings": 32768, "rope_scaling": {
        "rope_type": "longrope", "short_factor": [1.0] * 32, "long_factor": [4.0] * 32,
        "original_max_position_embeddings": 8192}}
    assert vllm_notes(switching, 8192) == []  # served within the switch: the short factors, as transformers
    [long] = vllm_notes(switching, 16448)
    assert "16448 > 8192" in long and "long factors at every length" in long
    same = {**switching, "rope_scaling": {**switching["rope_scaling"], "short_factor": [4.0] * 32}}
    assert vllm_notes(same, 16448) == []
