import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The bf16 probe pinned: `--dtype auto` resolves as on a CPU without native bf16 (fp32), whatever this
# machine's CPU (AMX, AVX512-BF16 or neither), so the suite computes the same on every kind. A test
# whose result depends on what auto resolves to takes the `cpu_bf16` fixture and runs under both answers.
PROBE = "ROPESTRETCH_CPU_BF16"
os.environ[PROBE] = "0"


def pytest_generate_tests(metafunc):
    if "cpu_bf16" in metafunc.fixturenames:
        metafunc.parametrize("cpu_bf16", [False, True], ids=["probe-fp32", "probe-bf16"], indirect=True)


@pytest.fixture
def cpu_bf16(request, monkeypatch):
    """The bf16 probe's answer for this test (both, by parametrization), for `--dtype auto` in this
    process and in the processes it starts."""
    monkeypatch.setenv(PROBE, "1" if request.param else "0")
    return request.param

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA2_CONFIG = os.path.join(REPO, "examples", "configs", "llama-2-7b.json")
GPT2_CONFIG = os.path.join(REPO, "examples", "configs", "gpt2.json")


def tiny_llama_config(**overrides):
    """A transformers-4.x-style config dict of a tiny Llama (head dim 16, window 64)."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 64,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved tiny random Llama checkpoint (safetensors), built once per test session."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(LlamaConfig(**tiny_llama_config()))
    model.save_pretrained(path, safe_serialization=True)
    return path


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama (window 64) with a 300-token BPE tokenizer trained on built-in text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ropestretch.data import builtin_documents, train_tokenizer

    path = tmp_path_factory.mktemp("tiny-lm")
    tok = train_tokenizer(builtin_documents(max_docs=120)[:40], vocab_size=300)
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(**tiny_llama_config(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    """A folder of .txt documents of real prose (Python's own documentation)."""
    from ropestretch.data import builtin_documents

    path = tmp_path_factory.mktemp("text")
    for i, doc in enumerate(builtin_documents(max_docs=120)[40:70]):
        (path / f"doc{i:02d}.txt").write_text(doc)
    return path
