"""Hostile input, round two: one regression test per case a fuzzing pass found (issue 35). Each
ends in one line and exit 2, or a correct result; nothing the user had is deleted or changed."""

import json
import os
import shutil

import pytest

from clihelp import assert_one_line_error, run_cli
from conftest import REPO, tiny_llama_config, write_json

TINY = os.path.join(REPO, "models", "tiny-llama-256")
APPLY = ["--scaling", "yarn", "--target", 1024]


def tiny_model(folder, **config_changes):
    """A copy of a tiny random model's folder whose config.json has ``config_changes``."""
    shutil.copytree(TINY, folder, ignore=shutil.ignore_patterns("*.md", "pretrain.json"))
    config = json.loads((folder / "config.json").read_text())
    for key, value in config_changes.items():
        if value is KeyError:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def everything(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- data loss ---------------------------------------------------------------------------------


def test_apply_never_removes_a_partial_folder_it_did_not_make(tmp_path):
    mine = tmp_path / ".x.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("notes")
    assert_one_line_error(run_cli("apply", "--model", TINY, *APPLY, "--out", tmp_path / "x"),
                          ".x.partial", "not made by ropestretch")
    assert (mine / "notes.txt").read_text() == "notes" and not (tmp_path / "x").exists()
    (tmp_path / ".y.partial").write_text("a file")
    assert_one_line_error(run_cli("apply", "--model", TINY, *APPLY, "--out", tmp_path / "y"), "not made by ropestretch")
    assert (tmp_path / ".y.partial").read_text() == "a file"
    # a leftover of ropestretch's own (a killed apply) is cleared, and the apply goes through
    leftover = tmp_path / ".z.partial"
    leftover.mkdir()
    (leftover / ".ropestretch-staging").write_text("")
    (leftover / "model.safetensors").write_bytes(b"half")
    code, _, err = run_cli("apply", "--model", TINY, *APPLY, "--out", tmp_path / "z")
    assert code == 0, err
    assert not leftover.exists() and not (tmp_path / "z" / ".ropestretch-staging").exists()


def test_out_inside_the_folder_being_read_is_refused(tmp_path):
    model = tiny_model(tmp_path / "big")
    before = everything(model)
    assert_one_line_error(run_cli("apply", "--model", model, *APPLY, "--out", model / "sub" / "o"),
                          "inside the model folder")
    assert_one_line_error(run_cli("apply", "--model", model, *APPLY, "--out", model), "inside the model folder")
    assert_one_line_error(run_cli("eval", "ppl", "--model", model, "--out", model / "run", "--lengths", 64),
                          "inside the model folder")
    assert_one_line_error(run_cli("eval", "ppl", "--model", model, "--out", model, "--lengths", 64),
                          "inside the model folder")
    assert_one_line_error(run_cli("train", "--model", model, "--data", model, "--out", model / "t", "--target", 1024,
                                  "--steps", 1), "inside the model folder")
    data = tmp_path / "texts"
    data.mkdir()
    (data / "a.txt").write_text("Some prose. " * 200)
    assert_one_line_error(run_cli("train", "--model", model, "--data", data, "--out", data / "run", "--target", 1024,
                                  "--steps", 1), "inside the data folder")
    assert_one_line_error(run_cli("rope", "--config", model, "--target", 1024, "--plot", model / "p.png"),
                          "inside the model folder")
    assert_one_line_error(run_cli("demo", "--base", model, "--out", model / "demo", "--quick"), "inside the base model")
    assert everything(model) == before  # no copy, no lock file, no run folder: the model is as it was
    assert everything(data) == ["a.txt"]


# --- tracebacks that are one line now ------------------------------------------------------------


@pytest.mark.parametrize("value", [1.5, True, 0, "abc", [1, 2], {"a": 1}])
def test_layer_types_that_are_not_a_list_of_names(tmp_path, value):
    config = write_json(tmp_path / "c.json", {**tiny_llama_config(), "layer_types": value})
    assert_one_line_error(run_cli("rope", "--config", config, "--target", 256), "layer_types must be a list")
    model = tiny_model(tmp_path / "m", layer_types=value)
    assert_one_line_error(run_cli("apply", "--model", model, *APPLY, "--out", tmp_path / "o"), "layer_types")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("key", ["rope_type", "type"])
@pytest.mark.parametrize("value", [["yarn"], {"a": 1}, 3])
def test_rope_type_that_is_not_a_name(tmp_path, key, value):
    config = write_json(tmp_path / "c.json", {**tiny_llama_config(), "rope_scaling": {key: value, "factor": 2.0}})
    assert_one_line_error(run_cli("rope", "--config", config, "--target", 256), f"{key} must be a name")


@pytest.mark.parametrize("key", ["beta_fast", "beta_slow", "factor", "attention_factor"])
def test_a_models_own_yarn_numbers_out_of_range(tmp_path, key):
    scaling = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32, key: 1e308}
    config = write_json(tmp_path / "c.json", {**tiny_llama_config(), "rope_scaling": scaling})
    assert_one_line_error(run_cli("rope", "--config", config, "--target", 256), f"{key} must be a positive number up to")


def test_a_deeply_nested_config(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200000 + "]" * 200000)
    assert_one_line_error(run_cli("rope", "--config", deep, "--target", 256), "nested too deeply")
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(deep, folder / "config.json")
    assert_one_line_error(run_cli("apply", "--model", folder, *APPLY, "--out", tmp_path / "o"), "nested too deeply")


@pytest.mark.parametrize("out", [".", "", "..", "   "])
def test_out_that_names_no_folder_of_its_own(tmp_path, monkeypatch, out):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert_one_line_error(run_cli("apply", "--model", TINY, *APPLY, "--out", out), "--out")
    assert_one_line_error(run_cli("eval", "ppl", "--model", TINY, "--out", out, "--lengths", 64), "--out")
    assert_one_line_error(run_cli("report", os.path.join(REPO, "evals", "tiny-llama-256"), "--out", out), "--out")
    assert list(empty.iterdir()) == [] and everything(tmp_path) == ["empty"]


def test_out_that_is_a_symlink(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert_one_line_error(run_cli("apply", "--model", TINY, *APPLY, "--out", tmp_path / "link"), "symbolic link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"] and list(target.iterdir()) == []


@pytest.fixture
def run_folder(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(os.path.join(REPO, "evals", "tiny-llama-256"), run)
    return run


def edit_first_line(run, change):
    lines = (run / "results.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    change(row)
    (run / "results.jsonl").write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")


@pytest.mark.parametrize("change,fragment", [
    (lambda r: r.pop("accuracy"), "line 1 needs accuracy"),
    (lambda r: r["cell"].pop("length"), "line 1 has no cell length"),
    (lambda r: r.update(accuracy="high"), "line 1 needs accuracy"),
    (lambda r: r.update(correct=30), "line 1 needs accuracy"),  # more right than asked
    (lambda r: r["cell"].update(depth="mid"), "line 1 has no depth"),
    (lambda r: r.update(samples=[{"i": 0}]), "line 1 has samples"),
    (lambda r: r.update(test="ppl", ppl=3.0, windows=["x"]), "line 1 has windows"),
    (lambda r: r.update(test="ppl", ppl=3.0, windows=[1.1, -0.5]), "line 1 has windows"),
    (lambda r: r.update(test="ppl", ppl=3.0, windows=[1.1, 1.2], prints=["ab"]), "line 1 has prints"),
    (lambda r: r.update(test="ppl", ppl=3.0, windows=[1.1, 1.2], prints=[1, 2]), "line 1 has prints"),
])
def test_report_on_hand_edited_results(tmp_path, run_folder, change, fragment):
    edit_first_line(run_folder, change)
    assert_one_line_error(run_cli("report", run_folder, "--out", tmp_path / "rep"), fragment)
    assert not (tmp_path / "rep").exists()


def test_report_on_a_perplexity_beyond_floats(tmp_path, run_folder):
    """Window NLLs whose exp (or the interval's bound) is past a float: reported, not a traceback."""
    for windows, cell in (([3.0, 1500.0], "| run | inf, n = 2 |"), ([3.0, 800.0], "| run | 2.34e+174, n = 2 |")):
        edit_first_line(run_folder, lambda r, w=windows: r.update(test="ppl", cell={"length": 64}, ppl=float("inf"),
                                                                  windows=w))
        code, _, err = run_cli("report", run_folder, "--out", tmp_path / "rep")
        assert code == 0, err
        assert cell in (tmp_path / "rep" / "report.md").read_text()


def test_report_on_a_perplexity_that_overflowed(tmp_path, run_folder):
    """A window whose NLL overflowed is reported as "-", not refused and not an interval of NaN."""
    edit_first_line(run_folder, lambda r: r.update(test="ppl", cell={"length": 64}, ppl=float("nan"),
                                                   windows=[float("nan"), 2.0]))
    code, _, err = run_cli("report", run_folder, "--out", tmp_path / "rep")
    assert code == 0, err
    assert "| run | - |" in (tmp_path / "rep" / "report.md").read_text()


def test_report_on_a_run_whose_model_record_is_corrupt(tmp_path):
    model = tiny_model(tmp_path / "model")
    (model / "ropestretch.json").write_text('{"window": 256, ')
    run = tmp_path / "run"
    code, _, err = run_cli("eval", "ppl", "--model", model, "--out", run, "--lengths", 64, "--samples", 1, "--no-progress")
    assert code == 0, err
    assert_one_line_error(run_cli("report", run, "--out", tmp_path / "rep"), "ropestretch.json is not valid JSON")
    (model / "ropestretch.json").write_text('{"window": "big", "target": 1024, "train_seconds": 3}')
    assert_one_line_error(run_cli("report", run, "--out", tmp_path / "rep"), "not a ropestretch model record")
    assert not (tmp_path / "rep").exists()


# --- accepted and wrong, now refused -----------------------------------------------------------


def test_eval_out_the_model_leaves_no_lock_in_it(tmp_path):
    model = tiny_model(tmp_path / "m")
    before = everything(model)
    assert_one_line_error(run_cli("eval", "ppl", "--model", model, "--out", model, "--lengths", 64), "inside the model")
    assert everything(model) == before


def test_empty_paths_are_refused_not_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli("positions", "--method", "cream", "--window", 64, "--target", 256, "--samples", 4,
                                  "--out", ""), "--out is empty")
    assert_one_line_error(run_cli("positions", "--method", "cream", "--window", 64, "--target", 256, "--samples", 4,
                                  "--plot", ""), "--plot is empty")
    config = write_json(tmp_path / "c.json", tiny_llama_config())
    assert_one_line_error(run_cli("rope", "--config", config, "--target", 256, "--plot", ""), "--plot is empty")
    assert_one_line_error(run_cli("eval", "ppl", "--model", TINY, "--out", tmp_path / "r", "--lengths", 64, "--text", ""),
                          "--text is empty")
    assert_one_line_error(run_cli("eval", "ppl", "--model", TINY, "--out", "", "--lengths", 64), "--out is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no run written into the current folder
