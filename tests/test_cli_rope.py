"""`ropestretch rope` and `ropestretch apply` as a user runs them."""

import json
import subprocess
import sys

import pytest

from clihelp import assert_one_line_error, run_cli
from conftest import GPT2_CONFIG, LLAMA2_CONFIG, tiny_llama_config, write_json


def test_json_output_for_llama2():
    code, out, err = run_cli("rope", "--config", LLAMA2_CONFIG, "--target", 8192, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["window"], data["target"], data["scaling"]) == (4096, 8192, "dprope")
    assert set(data["disturbance"]) >= {"linear", "ntk", "yarn", "dprope"}
    assert len(data["factors"]) == 64 and set(data["factors"]) <= {1.0, 2.0}
    assert data["rope_parameters"]["rope_type"] == "longrope"
    assert data["rope_parameters"]["short_factor"] == data["factors"]
    # disturbance is the plain mean over pairs of the per-pair KL sums
    per_pair = [min(e, i) for e, i in zip(data["dprope"]["extrapolation"], data["dprope"]["interpolation"])]
    assert data["disturbance"]["dprope"] == pytest.approx(sum(per_pair) / 64)


def test_json_for_another_scaling_and_n_hat():
    code, out, _ = run_cli("rope", "--config", LLAMA2_CONFIG, "--target", 8192, "--json", "--scaling", "yarn",
                           "--n-hat", 80)
    data = json.loads(out)
    assert code == 0 and data["scaling"] == "yarn" and data["rope_parameters"]["rope_type"] == "yarn"
    assert data["dprope"]["n_hat"] == 80 and sum(data["dprope"]["interpolate"]) == 40


def test_table_and_plot(tmp_path):
    png = tmp_path / "d.png"
    code, out, err = run_cli("rope", "--config", LLAMA2_CONFIG, "--target", 16384, "--plot", png)
    assert code == 0, err
    assert "dprope" in out and "interpolate" in out and "extrapolate" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_folder_config(tmp_path):
    write_json(tmp_path / "config.json", tiny_llama_config())
    code, out, _ = run_cli("rope", "--config", tmp_path, "--target", 256, "--json", "--scaling", "linear")
    assert code == 0 and json.loads(out)["factors"] == [4.0] * 8


@pytest.mark.parametrize("argv,fragment", [
    (["--target", 4096], "longer than"),
    (["--target", 2048], "longer than"),
    (["--target", 0], "positive integer"),
    (["--target", -8], "positive integer"),
    (["--target", "lots"], "positive integer"),
    (["--target", 8192, "--scaling", "ntk3"], "unknown scaling"),
    (["--target", 8192, "--bins", 1], "bins"),
    (["--target", 8192, "--threshold", 0.1, "--n-hat", 8], "not both"),
    (["--target", 8192, "--n-hat", 200], "n_hat"),
    (["--target", 8192, "--n-hat", -2], "an integer in 0..128, got -2"),
    (["--target", 8192, "--threshold", "nan"], "finite"),
    (["--target", 8192, "--plot", "x.pdf"], ".png"),
])
def test_bad_input_llama2(argv, fragment):
    assert_one_line_error(run_cli("rope", "--config", LLAMA2_CONFIG, *argv), fragment)


def test_bad_configs(tmp_path):
    assert_one_line_error(run_cli("rope", "--config", GPT2_CONFIG, "--target", 8192), "no rotary")
    assert_one_line_error(run_cli("rope", "--config", tmp_path / "missing.json", "--target", 8192), "no such")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert_one_line_error(run_cli("rope", "--config", bad, "--target", 8192), "not valid JSON")
    partial = write_json(tmp_path / "p.json", tiny_llama_config(head_dim=16, partial_rotary_factor=0.125))
    code, out, _ = run_cli("rope", "--config", partial, "--target", 256)  # two rotary dims: no NTK, the rest shown
    assert code == 0 and "ntk              refused  (scaling 'ntk' needs an even rotary dimension of at least 4" in out
    assert_one_line_error(run_cli("rope", "--config", partial, "--target", 256, "--scaling", "ntk"), "rotary dimension")
    assert_one_line_error(run_cli("rope", "--config", "nobody/nothing", "--target", 256), "hub")


def test_entry_point_exit_code_and_help():
    done = subprocess.run([sys.executable, "-m", "ropestretch", "rope", "--config", GPT2_CONFIG, "--target", "9"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    for sub in ([], ["rope"], ["apply"]):
        code, out, _ = run_cli(*sub, "--help")
        assert code == 0 and "usage:" in out


def test_apply_writes_loadable_copy_and_never_overwrites(tiny_llama_dir, tmp_path):
    out = tmp_path / "yarn"
    code, stdout, err = run_cli("apply", "--model", tiny_llama_dir, "--scaling", "yarn", "--target", 512,
                                "--out", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 512
    assert config["rope_parameters"]["rope_type"] == config["rope_scaling"]["rope_type"] == "yarn"
    assert (out / "model.safetensors").read_bytes() == (tiny_llama_dir / "model.safetensors").read_bytes()
    before = (out / "config.json").read_bytes()
    assert_one_line_error(run_cli("apply", "--model", tiny_llama_dir, "--scaling", "linear", "--target", 256,
                                  "--out", out), "not empty")
    assert (out / "config.json").read_bytes() == before
    assert_one_line_error(run_cli("apply", "--model", tmp_path / "none", "--scaling", "linear", "--target", 256,
                                  "--out", tmp_path / "x"), "model folder")
    assert_one_line_error(run_cli("apply", "--model", tiny_llama_dir, "--scaling", "linear", "--target", 32,
                                  "--out", tmp_path / "y"), "longer than")
    assert not (tmp_path / "y").exists()
    assert_one_line_error(run_cli("apply", "--model", tiny_llama_dir, "--scaling", "yarn", "--target", 256,
                                  "--n-hat", 4, "--out", tmp_path / "z"), "dprope only")


def test_apply_yarn_betas(tiny_llama_dir, tmp_path):
    out = tmp_path / "yarn8"
    code, _, err = run_cli("apply", "--model", tiny_llama_dir, "--scaling", "yarn", "--target", 512,
                           "--beta-fast", 8, "--out", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling"):
        assert (config[key]["beta_fast"], config[key]["beta_slow"]) == (8.0, 1.0)
    assert_one_line_error(run_cli("apply", "--model", tiny_llama_dir, "--scaling", "linear", "--target", 512,
                                  "--beta-fast", 8, "--out", tmp_path / "a"), "yarn only")
    assert_one_line_error(run_cli("apply", "--model", tiny_llama_dir, "--scaling", "yarn", "--target", 512,
                                  "--beta-fast", 1, "--beta-slow", 2, "--out", tmp_path / "b"), "larger than beta_slow")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
