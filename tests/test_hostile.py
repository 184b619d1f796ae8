"""Hostile use, one test per class: interruption (SIGINT and SIGKILL, each process in its own group
with SIGINT at its default, as a non-interactive shell ignores SIGINT for its background jobs), two writers on one folder,
a finished run resumed, files the user named, corrupt inputs of every kind, requests too large for
the machine, values that would be written as non-finite, and library noise on routine runs."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clihelp import assert_one_line_error, run_cli, sigint_default
from conftest import LLAMA2_CONFIG, REPO, tiny_llama_config, write_json

TRAIN = ["--target", 256, "--batch-size", 2, "--lr", 1e-3, "--cream-k", 4, "--no-progress"]
EVAL = ["--prompt", "legacy", "--lengths", "256,512", "--samples", 2, "--batch-size", 1, "--no-progress"]
LIBRARY_NOISE = ("Warning", "warn(", "deprecated", "missing keys", "mtime")


def spawn(*argv):
    """``ropestretch ARGV`` in its own process group, SIGINT at its default (so that SIGINT reaches it
    as from a terminal, wherever the tests themselves were started)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"), PYTHONWARNINGS="default")
    return subprocess.Popen([sys.executable, "-m", "ropestretch", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env,
                            preexec_fn=sigint_default)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_until(proc, ready, timeout=180):
    """Poll ``ready()`` while ``proc`` runs; fails if the process ends first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"ended before the interruption point: {finish(proc)}")
        assert time.time() < deadline, "the interruption point never came"
        time.sleep(0.05)


def lines(path):
    return path.read_text().splitlines() if path.is_file() else []


def logged_steps(run):
    return [json.loads(x)["step"] for x in lines(run / "log.jsonl") if '"loss"' in x]


def snapshot(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def assert_quiet(err):
    noise = [line for line in err.splitlines() if any(word in line for word in LIBRARY_NOISE)]
    assert not noise, noise


@pytest.mark.parametrize("sig", [signal.SIGINT])  # SIGKILL at two points: test_train.py
def test_train_interrupted_resumes_and_a_finished_run_never_changes(tiny_lm_dir, text_dir, tmp_path, sig):
    run = tmp_path / "run"
    argv = ["train", "--model", tiny_lm_dir, "--data", text_dir, "--out", run, *TRAIN, "--steps", 60,
            "--save-steps", 10, "--logging-steps", 1]
    proc = spawn(*argv)
    wait_until(proc, lambda: len(logged_steps(run)) >= 15)
    os.killpg(proc.pid, signal.SIGSTOP)  # held still, so that it cannot finish while the second writer is tried
    # a second writer meanwhile: one line, and the running one is not disturbed
    assert_one_line_error(run_cli(*argv, "--resume"), "in use by another ropestretch process")
    os.killpg(proc.pid, sig)
    os.killpg(proc.pid, signal.SIGCONT)
    code, _, err = finish(proc)
    if sig == signal.SIGINT:
        assert code == 130 and err.strip().splitlines()[-1] == "ropestretch train: interrupted", err
        assert "Traceback" not in err
    else:
        assert code == -signal.SIGKILL
    assert not (run / "model.safetensors").exists()  # an interrupted run is not a finished one
    code, out, err = finish(spawn(*argv, "--resume"))
    assert code == 0, err
    assert_quiet(err)
    meta = json.loads((run / "ropestretch.json").read_text())
    assert meta["steps"] == 60 and logged_steps(run)[-1] == 60
    before = snapshot(run)
    code, out, err = finish(spawn(*argv, "--resume"))
    assert code == 0 and "complete" in out + err, (out, err)
    assert snapshot(run) == before  # byte-identical, the log included


@pytest.mark.parametrize("sig", [signal.SIGKILL])  # SIGINT: the demo's test
def test_eval_interrupted_resumes_without_duplicates(tiny_lm_dir, tmp_path, sig):
    run = tmp_path / "eval"
    argv = ["eval", "passkey", "--model", tiny_lm_dir, "--out", run, *EVAL]
    proc = spawn(*argv)
    wait_until(proc, lambda: len(lines(run / "results.jsonl")) >= 2)
    assert_one_line_error(run_cli(*argv), "in use by another ropestretch process")
    os.killpg(proc.pid, sig)
    code, _, err = finish(proc)
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    assert "Traceback" not in err
    done = lines(run / "results.jsonl")
    assert 2 <= len(done) < 20
    code, _, err = finish(spawn(*argv))
    assert code == 0, err
    assert_quiet(err)
    after = lines(run / "results.jsonl")
    assert after[:len(done)] == done  # finished cells kept as they were
    cells = [json.dumps(json.loads(x)["cell"], sort_keys=True) for x in after if x.startswith("{")]
    assert len(cells) == len(set(cells)) == 20  # 2 lengths x 10 depths, each once


def test_results_line_cut_by_a_kill_does_not_swallow_the_next(tmp_path):
    from ropestretch.eval.store import RunStore, read_results

    store = RunStore(tmp_path, "ppl", {"model": "m"})
    store.add({"length": 1}, ppl=2.0)
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"test": "ppl", "cell": {"len')  # what SIGKILL mid-write leaves
    RunStore(tmp_path, "ppl", {"model": "m"}).add({"length": 2}, ppl=3.0)
    assert [r["cell"]["length"] for r in read_results(tmp_path)] == [1, 2]


def test_a_record_rewritten_when_the_write_fails_keeps_its_old_text(tmp_path, monkeypatch):
    from pathlib import Path

    from ropestretch.jsonl import write_whole

    record = tmp_path / "eval-args.json"
    write_whole(record, "old\n")
    write_whole(record, "new\n")
    assert record.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["eval-args.json"]

    def disk_full(self, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", disk_full)  # the kill or full disk between write and rename
    with pytest.raises(OSError):
        write_whole(record, "half of a newer record")
    assert record.read_text() == "new\n"


def test_demo_folder_has_one_writer(tmp_path):
    from ropestretch.locks import folder_lock

    out = tmp_path / "demo"
    with folder_lock(out, "test"):
        assert_one_line_error(run_cli("demo", "--quick", "--out", out, "--no-progress"),
                              "in use by another ropestretch process")
    assert not out.exists()  # the refused demo left nothing, and the lock went with its holder


def test_files_the_user_named_are_never_overwritten(tmp_path, tiny_lm_dir):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my figure")
    small = ["--window", 128, "--target", 512, "--samples", 20]
    assert_one_line_error(run_cli("positions", "--method", "cream", *small, "--plot", mine), "already exists")
    assert_one_line_error(run_cli("rope", "--config", LLAMA2_CONFIG, "--target", 8192, "--plot", mine),
                          "already exists")
    array = tmp_path / "mine.npy"
    array.write_bytes(b"my array")
    assert_one_line_error(run_cli("positions", "--method", "cream", *small, "--out", array), "already exists")
    assert mine.read_bytes() == b"my figure" and array.read_bytes() == b"my array"
    # a missing parent folder is created
    code, _, err = run_cli("positions", "--method", "cream", *small, "--out", tmp_path / "new" / "deep" / "p.npy")
    assert code == 0 and (tmp_path / "new" / "deep" / "p.npy").is_file(), err
    # report: a file as --out, and a report.md that is not ours
    run = tmp_path / "run"
    assert run_cli("eval", "ppl", "--model", tiny_lm_dir, "--out", run, "--lengths", 64, "--samples", 1,
                   "--no-progress")[0] == 0
    assert_one_line_error(run_cli("report", run, "--out", mine), "is a file")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "report.md").write_text("# my notes\n")
    assert_one_line_error(run_cli("report", run, "--out", foreign), "not a ropestretch report")
    assert (foreign / "report.md").read_text() == "# my notes\n" and mine.read_bytes() == b"my figure"


def test_corrupt_inputs_are_one_line(tiny_lm_dir, text_dir, tmp_path):
    import shutil

    # weights cut short, in train and in eval
    cut = tmp_path / "cut"
    shutil.copytree(tiny_lm_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_one_line_error(run_cli("train", "--model", cut, "--data", text_dir, "--out", tmp_path / "t1", *TRAIN,
                                  "--steps", 1), "model.safetensors is truncated")
    assert_one_line_error(run_cli("eval", "ppl", "--model", cut, "--out", tmp_path / "e1", "--lengths", 64),
                          "model.safetensors is truncated")
    # a tokenizer that is not JSON
    broken = tmp_path / "broken-tokenizer"
    shutil.copytree(tiny_lm_dir, broken)
    (broken / "tokenizer.json").write_text("{not json")
    assert_one_line_error(run_cli("eval", "ppl", "--model", broken, "--out", tmp_path / "e2", "--lengths", 64),
                          "tokenizer")
    # data: bytes that are not UTF-8, a line that is not JSON (file and line named)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    assert_one_line_error(run_cli("train", "--model", tiny_lm_dir, "--data", latin, "--out", tmp_path / "t2",
                                  *TRAIN, "--steps", 1), "latin.jsonl", "UTF-8")
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps({"text": "fine"}) + "\n{oops\n")
    assert_one_line_error(run_cli("train", "--model", tiny_lm_dir, "--data", bad_line, "--out", tmp_path / "t3",
                                  *TRAIN, "--steps", 1), "bad.jsonl", "line 2")
    # YAML: not UTF-8, not a mapping
    yaml_latin = tmp_path / "run.yaml"
    yaml_latin.write_bytes(b"lr: 1e-3\nnote: caf\xe9\n")
    assert_one_line_error(run_cli("train", "--config", yaml_latin), "run.yaml")
    yaml_list = tmp_path / "list.yaml"
    yaml_list.write_text("- a\n- b\n")
    assert_one_line_error(run_cli("train", "--config", yaml_list), "list.yaml")
    for n in (1, 2, 3):
        assert not (tmp_path / f"t{n}").exists()
    # run records: a results line that is JSON but no result, an eval-args.json that is not JSON
    run = tmp_path / "run"
    assert run_cli("eval", "ppl", "--model", tiny_lm_dir, "--out", run, "--lengths", 64, "--samples", 1,
                   "--no-progress")[0] == 0
    with open(run / "results.jsonl", "a") as fh:
        fh.write("[1, 2, 3]\n")
    assert_one_line_error(run_cli("report", run), "line 2 is not a ropestretch result")
    (run / "eval-args.json").write_text("{cut")
    assert_one_line_error(run_cli("report", run), "eval-args.json")
    assert_one_line_error(run_cli("eval", "ppl", "--model", tiny_lm_dir, "--out", run, "--lengths", 64,
                                  "--samples", 1), "eval-args.json")


def test_requests_beyond_the_machine_are_refused_with_the_estimate(tmp_path):
    assert_one_line_error(run_cli("positions", "--method", "cream", "--window", 4096, "--target", 32768,
                                  "--samples", 10**9), "needs about", "GB")
    assert_one_line_error(run_cli("rope", "--config", LLAMA2_CONFIG, "--target", 8192, "--bins", 10**9),
                          "needs about")
    assert_one_line_error(run_cli("rope", "--config", LLAMA2_CONFIG, "--target", 2**40), "hours")
    huge = write_json(tmp_path / "huge.json", tiny_llama_config(head_dim=2**20))
    assert_one_line_error(run_cli("rope", "--config", huge, "--target", 256), "head")


def test_values_that_overflow_are_refused_before_a_config_is_written(tmp_path, tiny_llama_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["rope_theta"] = 1e308
    if "rope_parameters" in config:  # the layout transformers 5 saves holds the base there
        config["rope_parameters"]["rope_theta"] = 1e308
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "ntk"
    code, _, err = run_cli("apply", "--model", model, "--scaling", "ntk", "--target", 256, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_routine_runs_print_no_library_warnings(tiny_lm_dir, tmp_path, cpu_bf16):
    """eval needle, eval ppl and report, in one fresh process (train's resume: above)."""
    run = tmp_path / "run"
    common = ["--model", tiny_lm_dir, "--out", run, "--no-progress"]
    commands = [["eval", "needle", *common, "--prompt", "legacy", "--lengths", 256, "--depths", "0,100",
                 "--samples", 2], ["eval", "ppl", *common, "--lengths", 128, "--samples", 1], ["report", run]]
    script = ("import sys; from ropestretch.cli import main\n"
              f"for argv in {[[str(a) for a in c] for c in commands]!r}:\n"
              "    code = main(argv)\n"
              "    if code: sys.exit(code)\n")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"), PYTHONWARNINGS="default")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (run / "report.md").is_file()
    assert_quiet(done.stderr)
