"""`ropestretch demo --quick` end to end on the shipped base model, and the base model's own figures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clihelp import sigint_default
from conftest import REPO

BASE = os.path.join(REPO, "models", "tiny-llama-256")
DEMO_PLAN = Path(REPO) / "examples" / "studies" / "demo.yaml"
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(BASE, "model.safetensors")),
                                reason="the shipped base model is missing")


def test_quick_demo_writes_report_only_under_out_survives_interruptions_and_reuses_steps(tmp_path):
    """Killed (SIGKILL) while it writes the training-free checkpoints, interrupted (SIGINT) while it
    fine-tunes, then run to the end: the report holds the default variants, nothing is written
    outside --out, and a further rerun does no work and changes no result."""
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "demo"
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
               PYTHONPATH=os.path.join(REPO, "src"))
    env.pop("HF_HOME", None)
    cmd = [sys.executable, "-m", "ropestretch", "demo", "--quick", "--out", str(out), "--no-progress"]

    def interrupted(sig, ready):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, preexec_fn=sigint_default)
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        return proc.wait(timeout=600), proc.communicate()[1]  # a guard against a hang, not a time target

    code, _ = interrupted(signal.SIGKILL, lambda: (out / "models" / "yarn" / "ropestretch.json").is_file())
    assert code == -signal.SIGKILL
    code, err = interrupted(signal.SIGINT, lambda: (out / "models" / "cream-yarn" / "log.jsonl").is_file())
    assert code == 130 and err.strip().splitlines()[-1] == "ropestretch demo: interrupted", err
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report.md").read_text()
    for variant in ("base", "yarn", "dprope", "pose-yarn", "cream-yarn", "cream-dprope", "full-linear"):
        assert f"| {variant} |" in report
    assert "\n| linear |" not in report and "\n| cream-linear |" not in report  # --all only
    assert "## Training cost" in report and (out / "ppl-vs-length.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "home"]  # nothing beside the output folder
    assert not any(home.rglob("*"))                                        # nor in the home folder
    record = json.loads((out / "study.json").read_text())
    assert record["plan"] == "demo-quick" and not os.path.isabs(record["model"])  # a demo reruns from any checkout
    results = {p: p.read_text() for p in (out / "runs").rglob("results.jsonl")}
    rows = [json.loads(line) for p, text in results.items() if p.parts[-3] == "cream-yarn" for line in text.splitlines()]
    beyond = {(r["test"], r.get("n")) for r in rows if r["cell"]["length"] > 2048}
    assert beyond == {("passkey", 1), ("ppl", None)}  # beyond L: the tail's tests, at the tail's sample count
    assert {r["n"] for r in rows if r["test"] == "passkey" and r["cell"]["length"] <= 2048} == {2}
    assert {r["cell"]["gold"] for r in rows if r["test"] == "kv"} == {0.0, 1.0}
    # the plan's YaRN options reach the training-free and the fine-tuned checkpoints alike
    for variant in ("yarn", "cream-yarn", "pose-yarn"):
        rope = json.loads((out / "models" / variant / "config.json").read_text())["rope_parameters"]
        assert (rope["rope_type"], rope["beta_fast"], rope["beta_slow"]) == ("yarn", 16.0, 1.0), variant
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fine-tune" not in again.stderr and "apply" not in again.stderr and " eval " not in again.stderr
    assert {p: p.read_text() for p in (out / "runs").rglob("results.jsonl")} == results  # every step reused
    # the full plan in the same folder: refused, the quick checkpoints never taken for the full ones
    full = subprocess.run(cmd[:-4] + ["--out", str(out), "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 2 and "holds a study made with other settings" in full.stderr, full.stderr


def test_the_demo_plans_name_the_documented_settings():
    """The demo's plan holds the settings the README and findings document, and its quick form
    is that plan with small budgets (`extends`), the linear variants optional (`--all`)."""
    from ropestretch.study import load_plan

    plan = load_plan(DEMO_PLAN)
    assert (plan.target, plan.dtype, plan.model) == (2048, "fp32", "models/tiny-llama-256")
    assert [v for v, spec in plan.variants.items() if not spec.get("optional")] == [
        "base", "yarn", "dprope", "pose-yarn", "cream-yarn", "cream-dprope", "full-linear"]
    assert [v for v, spec in plan.variants.items() if spec.get("optional")] == ["linear", "pose-linear", "cream-linear"]
    train = plan.texts["train"]
    budget = plan.training["steps"] * plan.training["batch_size"] * train["length"]
    assert budget == train["count"] * train["length"] == 1_024_000 == plan.texts["train-full"]["count"] * 2048
    assert plan.training["steps"] * plan.variants["full-linear"]["training"]["batch_size"] * 2048 == budget
    assert train["needles"] == 3 and train["mix"] == {"text": 0.1, "passkey": 0.15, "needle": 0.6, "lines": 0.15}
    assert plan.variants["yarn"]["options"] == {"beta_fast": 16.0}
    assert all(spec.get("training", {}).get("yarn_beta_fast") == 16.0 for v, spec in plan.variants.items()
               if spec.get("scaling") == "yarn" and "positions" in spec)
    quick = load_plan(DEMO_PLAN.with_name("demo-quick.yaml"))
    assert quick.variants["full-linear"] == {**plan.variants["full-linear"], "training": {"batch_size": 1}}
    assert quick.texts["train"] == {**train, "count": 32} and quick.training["steps"] == 4
    assert quick.evaluation == plan.evaluation and quick.summary == plan.summary
    assert {c.depths for c in quick.cells if c.task == "needle"} == {(0.0, 50.0)}


def test_base_model_card_states_its_recipe():
    card = open(os.path.join(BASE, "README.md")).read()
    record = json.load(open(os.path.join(BASE, "pretrain.json")))
    assert "ropestretch pretrain" in card and str(record["recipe"]["seed"]) in card
    # the card's command is the defaults: they must be the recipe that made the checkpoint
    from ropestretch.pretrain import PretrainConfig

    assert record["recipe"] == PretrainConfig().recipe()
    assert os.path.getsize(os.path.join(BASE, "model.safetensors")) <= 20 * 1024 * 1024


def test_demo_training_rows_mix_copy_blocks_and_retrieval():
    """A copy row repeats one random block (the base's copy curriculum); a retrieval row ends with its
    answer and end-of-text; every row is exactly the window long; an unknown kind is one clear error."""
    from transformers import AutoTokenizer

    from ropestretch.data.training_rows import make_rows
    from ropestretch.errors import UsageError

    tok = AutoTokenizer.from_pretrained(BASE)
    rows = [r["input_ids"] for r in make_rows("mix", tok, 256, 40, seed=0, mix={"copy": 0.5, "needle": 0.5})]
    assert all(len(r) == 256 for r in rows)
    periods = [next((p for p in range(16, 49) if r[p:] == r[:-p]), None) for r in rows]
    ends = [r[-1] == tok.eos_token_id for r in rows]
    assert all(p is not None or e for p, e in zip(periods, ends))
    assert 10 <= sum(p is not None for p in periods) <= 30 and 10 <= sum(ends) <= 30
    with pytest.raises(UsageError, match="unknown training task"):
        make_rows("mix", tok, 256, 4, seed=0, mix={"video": 1.0})


def test_needles_row_asks_every_needle_with_its_own_number():
    """Each needle row holds 1 to K needles of distinct cities in its haystack and asks every one at
    its end, each answer the number its needle holds; the counts are uniform over 1..K; bad K and a
    too short row are one clear error."""
    import re

    import numpy as np
    from transformers import AutoTokenizer

    from ropestretch.data import tasks
    from ropestretch.data.corpus import builtin_documents
    from ropestretch.errors import UsageError

    tok = AutoTokenizer.from_pretrained(BASE)
    haystack, rng = tasks.Haystack(tok, builtin_documents()), np.random.default_rng(0)
    counts = []
    for _ in range(150):
        row = tasks.needles_row(tok, haystack, 256, rng, 3)
        assert len(row) == 256 and row[-1] == tok.eos_token_id
        text = tok.decode(row[:-1])
        asked = re.findall(r"What is the magic number of (\w+)\? The magic number of \1 is (\d{7})", text)
        first_question = text.index(" What is the magic number of")
        held = re.findall(r"The magic number of (\w+) is (\d{7})\.", text[:first_question])
        assert sorted(asked) == sorted(held) and len({c for c, _ in held}) == len(held)
        assert text[first_question:].count("What is") == len(asked)  # nothing but the questions after the haystack
        counts.append(len(asked))
    assert set(counts) == {1, 2, 3} and all(35 <= counts.count(k) <= 65 for k in (1, 2, 3))
    assert {len(re.findall("What is", tok.decode(tasks.needles_row(tok, haystack, 256, rng, 1))))
            for _ in range(10)} == {1}
    for bad in (0, True, 2.5):
        with pytest.raises(UsageError, match="needles per row"):
            tasks.needles_row(tok, haystack, 256, rng, bad)
    with pytest.raises(UsageError, match="too short"):
        tasks.needles_row(tok, haystack, 40, np.random.default_rng(1), 3)


def test_demo_training_rows_hold_several_needles_only_when_asked():
    from transformers import AutoTokenizer

    from ropestretch.data.training_rows import make_rows
    from ropestretch.errors import UsageError

    tok = AutoTokenizer.from_pretrained(BASE)
    for needles, most in ((1, 1), (3, 3)):
        rows = make_rows("mix", tok, 256, 30, seed=0, mix={"needle": 1.0}, needles=needles)
        asked = [tok.decode(r["input_ids"]).count("What is the magic number") for r in rows]
        assert max(asked) == most and min(asked) == 1
    for bad in (0, -2, 1.5):
        with pytest.raises(UsageError, match="needles per row must be an integer from 1"):
            make_rows("mix", tok, 256, 3, seed=0, mix={"needle": 1.0}, needles=bad)
