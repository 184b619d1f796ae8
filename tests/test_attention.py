"""Self-Extend and STRING as attention functions, against naive references written from the papers'
formulas: an explicit relative-position matrix and eager softmax attention, on tiny models of three
families (Llama 3.1's llama3 RoPE with grouped-query attention, Qwen2.5 with biases, StableLM 2 with
partial rotary), at lengths below and above the switch points."""

import pytest
import torch

from clihelp import assert_one_line_error, run_cli
from ropestretch import UsageError
from ropestretch.attention import enable
from tiny_models import build


def self_extend_rel(i, j, group, neighbor):
    """Jin et al. 2024: normal within the neighbour window, grouped beyond, the two meeting at w."""
    return torch.where(i - j < neighbor, i - j, i // group - j // group + neighbor - neighbor // group)


def string_rel(i, j, shift, local):
    """An et al. 2024: distances from S on shifted back by S - W."""
    return torch.where(i - j < shift, i - j, i - j - shift + local)


def naive_attention(rel_of, inv_freq):
    """Eager attention whose score for (i, j) is the RoPE dot product at relative position rel(i, j):
    the queries and keys come rotated at their own positions p, so in complex form the score is
    Re(sum_f q_f conj(k_f) exp(1j (rel - (i - j)) theta_f)) on the rotary pairs, plus the rest."""
    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        batch, heads, t, dim = query.shape
        key = key.repeat_interleave(heads // key.shape[1], 1)
        value = value.repeat_interleave(heads // value.shape[1], 1)
        half = inv_freq.shape[0]
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        extra = (rel_of(i, j) - (i - j)).double()[..., None] * inv_freq.double()  # (t, t, half)
        qc = torch.complex(query[..., :half].double(), query[..., half:2 * half].double())
        kc = torch.complex(key[..., :half].double(), key[..., half:2 * half].double())
        rotary = (qc[:, :, :, None, :] * kc[:, :, None, :, :].conj() * torch.exp(1j * extra)).real.sum(-1)
        rest = query[..., 2 * half:].double() @ key[..., 2 * half:].double().transpose(-1, -2)
        scores = (rotary + rest) * (dim ** -0.5 if scaling is None else scaling)
        scores = scores.masked_fill(j > i, float("-inf"))
        out = torch.softmax(scores, -1).to(value.dtype) @ value
        return out.transpose(1, 2).contiguous(), None
    return attend


METHODS = [("self-extend", {"group": 4, "neighbor": 24}, self_extend_rel),
           ("string", {"shift": 40, "local": 8}, string_rel)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    out = {}
    for family in ("llama-3.1-8b", "qwen2.5-7b", "stablelm-2-1.6b"):
        folder = build(family, tmp_path_factory.mktemp(family), "hub")
        out[family] = folder
    return lambda family: AutoModelForCausalLM.from_pretrained(out[family], dtype=torch.float32).eval()


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "products"])
@pytest.mark.parametrize("family", ["llama-3.1-8b", "qwen2.5-7b", "stablelm-2-1.6b"])
@pytest.mark.parametrize("method,options,rel", METHODS, ids=[m[0] for m in METHODS])
def test_the_fast_path_equals_the_papers_formula(models, family, method, options, rel, fused, monkeypatch):
    """Both ways of computing it (each branch through PyTorch's fused CPU kernel merged by log-sum-exp,
    or the chunk's scores chosen by i - j) against the explicit relative-position matrix."""
    from transformers import AttentionInterface

    import ropestretch.attention as attention

    monkeypatch.setattr(attention, "FUSED", fused)
    assert fused is False or attention._flash_for_cpu() is not None  # the pinned PyTorch has the kernel

    model = models(family)
    ids = torch.randint(3, 500, (1, 120), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(ids).logits
    recorded = enable(model, method, 120, **options)
    assert recorded == {"method": method, **options}
    monkeypatch.setattr(attention, "CHUNK_FLOATS", 2 * 120 * 40)  # several query chunks
    with torch.no_grad():
        fast = model(ids).logits
    inv_freq = model.model.rotary_emb.inv_freq
    AttentionInterface.register("naive_remap", naive_attention(lambda i, j: rel(i, j, *options.values()), inv_freq))
    model.set_attn_implementation("naive_remap")
    with torch.no_grad():
        naive = model(ids).logits
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-4)
    boundary = options.get("neighbor", options.get("shift"))
    # below the switch point nothing is remapped: the model's own attention, position for position
    torch.testing.assert_close(fast[:, :boundary], plain[:, :boundary], rtol=1e-4, atol=1e-4)
    assert (fast[:, boundary + 5:] - plain[:, boundary + 5:]).abs().max() > 1e-3  # and past it, something is


@pytest.mark.parametrize("method,options,rel", METHODS, ids=[m[0] for m in METHODS])
def test_a_chunked_prefill_and_decoding_equal_one_forward(models, method, options, rel):
    """The KV cache holds keys at their own positions; each call remaps from there (prefill in chunks,
    then one token at a time, as the evaluation runs)."""
    from transformers import DynamicCache

    model = models("llama-3.1-8b")
    enable(model, method, 100, **options)
    ids = torch.randint(3, 500, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(ids).logits
        cache = DynamicCache(config=model.config)
        parts = [model(ids[:, a:b], cache=cache, use_cache=True).logits for a, b in ((0, 30), (30, 90))]
        parts += [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(90, 100)]
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-4, atol=1e-4)


def test_what_the_methods_cannot_serve_is_one_line(models, tmp_path):
    from transformers import AutoModelForCausalLM

    model = models("llama-3.1-8b")
    window = model.config.max_position_embeddings
    with pytest.raises(UsageError, match=r"reaches .* is past it"):
        enable(model, "self-extend", (window - 1024) * 4 + 1024 + 1, group=4, neighbor=1024)
    enable(model, "self-extend", (window - 1024) * 4 + 1024, group=4, neighbor=1024)  # exactly its reach
    with pytest.raises(UsageError, match="STRING needs 0 < --local"):
        enable(model, "string", 100, shift=8, local=16)
    with pytest.raises(UsageError, match="takes no option 'shift'"):
        enable(model, "self-extend", 100, shift=8)
    for family, reason in (("gemma-2-9b", "sliding-window"), ("command-r", "interleaved")):
        other = AutoModelForCausalLM.from_pretrained(build(family, tmp_path / family, "hub"), dtype=torch.float32)
        with pytest.raises(UsageError, match=reason):
            enable(other, "string", 100)


def test_eval_takes_the_methods_records_them_and_export_refuses_them(tiny_lm_dir, tmp_path):
    import json

    run = tmp_path / "run"
    common = ["--model", tiny_lm_dir, "--prompt", "legacy", "--lengths", "128", "--depths", "0,100", "--samples", "1",
              "--no-progress"]
    # the tiny model's RoPE covers 64 positions: G 4, w 32 reach (64 - 32) x 4 + 32 = 160, room for 128 and an answer
    code, _, err = run_cli("eval", "passkey", *common, "--out", run, "--attention", "self-extend", "--group", "4",
                           "--neighbor", "32")
    assert code == 0, err
    recorded = json.loads((run / "eval-args.json").read_text())["passkey"]
    assert recorded["attention"] == {"method": "self-extend", "group": 4, "neighbor": 32}
    # another attention in the same folder is other arguments
    assert_one_line_error(run_cli("eval", "passkey", *common, "--out", run, "--attention", "self-extend", "--group",
                                  "8", "--neighbor", "32"), "differs in: attention")
    assert_one_line_error(run_cli("eval", "passkey", *common, "--out", run, "--attention", "string"),
                          "STRING needs 0 < --local (128) < --shift (21)")
    assert_one_line_error(run_cli("eval", "passkey", *common, "--out", tmp_path / "far", "--attention", "self-extend",
                                  "--group", "2", "--neighbor", "60", "--lengths", "200"), "reaches 68 tokens")
    assert not (tmp_path / "far").exists()
    assert_one_line_error(run_cli("eval", "passkey", *common, "--out", tmp_path / "x", "--group", "2"),
                          "--group goes with --attention self-extend")
    for command in (["apply", "--model", tiny_lm_dir, "--scaling", "yarn", "--target", "256"],
                    ["gguf", "--model", tiny_lm_dir]):
        assert_one_line_error(run_cli(*command, "--out", tmp_path / "export", "--attention", "string"),
                              "no engine runs")
        assert not (tmp_path / "export").exists()
