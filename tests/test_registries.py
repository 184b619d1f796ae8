"""A scaling or a sampler is one function and the declaration of its options: the flags of
``apply``, ``rope``, ``positions`` and ``train``, the training config's YAML keys and the library's
checks are generated from it (a test-only entry shows up in each)."""

import json

import pytest

from clihelp import assert_one_line_error, run_cli
from ropestretch.options import Option
from ropestretch.positions import SAMPLER_OPTIONS, SAMPLERS
from ropestretch.positions import register as register_sampler
from ropestretch.rope.scalings import SCALING_OPTIONS, SCALINGS, register


@pytest.fixture
def toy_scaling():
    @register("toy", Option("alpha", 2.0, "a test-only knob", kind="float"))
    def toy(rope, target, alpha=2.0):
        plan = SCALINGS["ntk"](rope, target)
        plan.details["alpha"] = alpha
        return plan

    yield toy
    SCALINGS.pop("toy"), SCALING_OPTIONS.pop("toy")


@pytest.fixture
def toy_sampler():
    @register_sampler("toyshift", Option("shift", 0, "a test-only offset", kind="int"))
    def toyshift(batch, window, target, generator, shift=0):
        import torch

        return (torch.arange(window) + shift).expand(batch, window).clone()

    yield toyshift
    SAMPLERS.pop("toyshift"), SAMPLER_OPTIONS.pop("toyshift")


def test_a_scaling_with_one_option_is_one_function_and_one_declaration(toy_scaling, tiny_llama_dir, tmp_path):
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.train import load_yaml, make_config, scaling_options

    rope = load_rope_config(tiny_llama_dir)
    assert scale(rope, "toy", 4 * rope.window, alpha=3).details["alpha"] == 3
    assert scale(rope, "toy", 4 * rope.window).details["alpha"] == 2.0  # the declared default
    with pytest.raises(Exception, match="takes no option 'beta_fast'"):
        scale(rope, "toy", 4 * rope.window, beta_fast=3)
    # the CLI: apply's and train's flags, generated
    for command, flag in (("apply", "--alpha"), ("train", "--toy-alpha")):
        code, out, _ = run_cli(command, "--help")
        assert code == 0 and flag in out and "a test-only knob" in out
    out = tmp_path / "toy"
    code, _, err = run_cli("apply", "--model", tiny_llama_dir, "--scaling", "toy", "--target", 4 * rope.window,
                           "--out", out, "--alpha", "5")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 4 * rope.window
    assert_one_line_error(run_cli("apply", "--model", tiny_llama_dir, "--scaling", "yarn", "--target", 4 * rope.window,
                                  "--out", tmp_path / "y", "--alpha", "5"), "--alpha applies to --scaling toy only")
    # train: a field and a YAML key
    yaml = tmp_path / "run.yaml"
    yaml.write_text("toy_alpha: 4\nyarn-beta-fast: 16\n")
    values = load_yaml(yaml)
    cfg = make_config(model=str(tiny_llama_dir), data="x", out=str(tmp_path / "r"), target=1024, scaling="toy", **values)
    assert scaling_options(cfg) == {"alpha": 4.0} and cfg.toy_alpha == 4.0 and cfg.yarn_beta_fast == 16.0
    assert cfg.identity()["toy_alpha"] == 4.0 and "yarn_beta_slow" not in cfg.identity()  # defaults left out
    with pytest.raises(Exception, match="option toy_alpha must be float"):
        make_config(model="m", data="x", out="o", target=1024, toy_alpha="lots")


def test_a_sampler_with_one_option_is_one_function_and_one_declaration(toy_sampler, tmp_path):
    from ropestretch.positions import sample_positions
    from ropestretch.train import make_config, position_options

    assert sample_positions("toyshift", 2, 8, 32, seed=0, shift=3)[0].tolist() == list(range(3, 11))
    with pytest.raises(Exception, match="takes no option 'k'"):
        sample_positions("toyshift", 2, 8, 32, seed=0, k=3)
    code, out, _ = run_cli("positions", "--help")
    assert code == 0 and "--shift" in out
    code, out, err = run_cli("positions", "--method", "toyshift", "--window", "8", "--target", "32", "--samples", "4",
                             "--shift", "2", "--json")
    assert code == 0, err
    assert_one_line_error(run_cli("positions", "--method", "cream", "--window", "8", "--target", "32", "--shift", "2"),
                          "--shift applies to --method toyshift only")
    cfg = make_config(model="m", data="x", out=str(tmp_path / "r"), target=1024, positions="toyshift", toyshift_shift=5)
    assert position_options(cfg) == {"shift": 5}
    code, out, _ = run_cli("train", "--help")
    assert "--toyshift-shift" in out


def test_declared_defaults_are_the_functions_own():
    """A declaration and its function cannot drift: every declared option is a keyword of the
    function with the same default."""
    import inspect

    from ropestretch.positions import cream_draw

    for registry, functions in ((SCALING_OPTIONS, SCALINGS), (SAMPLER_OPTIONS, SAMPLERS)):
        for name, options in registry.items():
            fn = cream_draw if name == "cream" else functions[name]  # cream passes its options to its draw
            params = inspect.signature(fn).parameters
            for o in options:
                assert o.name in params and params[o.name].default == o.default, (name, o.name)


def test_old_runs_recorded_every_default_and_still_resume_as_the_same_run():
    from ropestretch.train import without_defaults

    old = {"model": "m", "cream_k": 32, "cream_mu": None, "yarn_beta_fast": 32.0, "dprope_bins": 360}
    assert without_defaults(old) == {"model": "m"}
    assert without_defaults({"cream_k": 64}) == {"cream_k": 64}
