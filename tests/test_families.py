"""The architecture matrix: tiny random models carrying the real RoPE settings of 27 checkpoints
(examples/configs/families), each in its hub layout and in the layout transformers 5 saves.

For every one: the RoPE ropestretch reads is what the stock-loaded model's rotary module runs;
`apply` with every scaling writes a checkpoint that stock transformers loads with ropestretch's
frequencies and attention factor; a 2-step cream x yarn `train` writes one that loads and gives
finite logits at the target. The references are transformers' own modules and init functions.
"""

import json

import pytest
import torch

from tiny_models import build, family_names, forward_at, loaded_rope
from ropestretch.errors import UsageError
from ropestretch.rope import rope_config_from_dict, rope_frequencies, scale
from ropestretch.rope.export import apply_to_checkpoint

NAMES = family_names()
LAYOUTS = ["hub", "v5"]
SCALINGS = ["none", "linear", "ntk", "dynamic", "yarn", "dprope"]
SHORT_TEXT = ("The rotary embedding turns each pair of dimensions by an angle that grows with the position. "
              "A model trained on short windows has seen only small angles for its slowest pairs. ") * 6
_models: dict = {}
_scaled: dict = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    def get(name, layout):
        if (name, layout) not in _models:
            folder = tmp_path_factory.mktemp(f"{name}-{layout}")
            _models[name, layout] = build(name, folder, layout)
        return _models[name, layout]
    return get


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """Trainer runs a full gc.collect() at every start (accelerate's free_memory); with the matrix's
    models alive that is most of a 2-step run. Freezing what exists keeps it to the new objects."""
    import gc

    import datasets  # noqa: F401  everything a run imports, imported before the freeze
    from transformers import AutoModelForCausalLM, Trainer  # noqa: F401

    import ropestretch.train  # noqa: F401

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def read(folder):
    return rope_config_from_dict(json.loads((folder / "config.json").read_text()))


def scaled(name, rope, scaling):
    """scale() once per family and scaling (both layouts read the same RoPE; the first test checks it)."""
    key = (name, scaling)
    if key not in _scaled:
        try:
            _scaled[key] = scale(rope, scaling, 2 * rope.window)
        except UsageError as err:
            _scaled[key] = err
    return _scaled[key]


def refused(rope, scaling):
    """The documented refusals: a new scaling on DeepSeek's yarn (its attention scale reads the RoPE),
    and dynamic NTK on an already-scaled RoPE or a Phi-3 config (no stock form)."""
    if rope.family.softmax_reads_rope and not rope.plain:
        return scaling != "none"
    return scaling == "dynamic" and (not rope.plain or rope.family.export_types is not None)


def stock(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_reads_the_rope_the_model_runs(models, name, layout):
    folder = models(name, layout)
    rope = read(folder)
    model = stock(folder)
    forward_at(model, rope.window - 1)  # longrope and dynamic settle on a sequence of the whole window
    inv_freq, attention = loaded_rope(model, rope.layer_type)
    mine, my_attention = rope_frequencies(rope)
    torch.testing.assert_close(mine, inv_freq, rtol=1e-5, atol=0)
    assert my_attention == pytest.approx(attention, rel=1e-6)
    other = read(models(name, "v5" if layout == "hub" else "hub"))
    torch.testing.assert_close(rope_frequencies(other)[0], mine, rtol=0, atol=0)
    assert (other.window, other.rotary_dim, other.rope_type) == (rope.window, rope.rotary_dim, rope.rope_type)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_apply_every_scaling_loads_with_its_frequencies(models, tmp_path, name, layout):
    folder = models(name, layout)
    rope = read(folder)
    for scaling in SCALINGS:
        result = scaled(name, rope, scaling)
        if refused(rope, scaling):
            assert isinstance(result, UsageError), f"{scaling} should be refused"
            assert "\n" not in str(result)
            continue
        assert not isinstance(result, UsageError), f"{scaling}: {result}"
        out = apply_to_checkpoint(folder, tmp_path / scaling, result)
        model = stock(out)
        forward_at(model, result.target - 1)
        inv_freq, attention = loaded_rope(model, rope.layer_type)
        torch.testing.assert_close(inv_freq, result.inv_freq, rtol=1e-5, atol=0, msg=scaling)
        assert attention == pytest.approx(result.attention_factor, rel=1e-6), scaling
        assert model.config.max_position_embeddings == result.max_position_embeddings
        # reading the exported config back gives the RoPE that was exported
        again = read(out)
        torch.testing.assert_close(rope_frequencies(again, result.target)[0], result.inv_freq, rtol=0, atol=0)
        if rope.other_layers:  # the sliding-window layers run exactly as before
            sliding = loaded_rope(model, "sliding_attention")[0]
            torch.testing.assert_close(sliding, loaded_rope(stock(folder), "sliding_attention")[0], rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_cream_yarn_train_loads_at_target(models, tmp_path, name, layout):
    from ropestretch.train import make_config, train

    folder = models(name, layout)
    rope = read(folder)
    target = 2 * rope.window
    data = tmp_path / "data.txt"
    data.write_text(SHORT_TEXT)
    cfg = make_config(model=str(folder), data=str(data), out=str(tmp_path / "run"), target=target,
                      positions="cream", scaling="yarn" if not refused(rope, "yarn") else "none", steps=2,
                      batch_size=1, row_length=32, cream_k=4, lr=1e-3, warmup_steps=0, max_samples=4,
                      save_steps=100, progress=False)
    result = train(cfg)
    model = stock(result.out)
    logits = forward_at(model, target - 1, tokens=4)
    assert torch.isfinite(logits).all()
    inv_freq, _ = loaded_rope(model, rope.layer_type)
    expected = scale(rope, cfg.scaling, target)
    torch.testing.assert_close(inv_freq, expected.inv_freq, rtol=1e-5, atol=0)
