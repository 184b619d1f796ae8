"""Pre-train the small base model that ships with ropestretch, from scratch, on 2 CPU cores.

A Llama-architecture model with window ``N = 256`` on text that needs no download (the English
that ships with Python), mixed with the synthetic retrieval formats, so that inside its window
it retrieves a pass key and a line's value, and beyond it collapses: the starting point the
methods exist to fix. Retrieval rests on copying (induction heads), which a small model learns
slowly from text alone, so the curriculum teaches copying first:

1. ``copy_steps`` on repeated random token blocks;
2. ``mix_steps`` on a mix of prose, copy blocks and passkey / needle / lines / kv samples.

Status (measured on 2 CPU cores; figures in models/tiny-llama-256/README.md): with the defaults
the model retrieves a pass key inside its window at 75-90% for depths 25-100% but not at depth 0,
and LongChat-Lines at 10%: below the >= 95% / >= 90% aimed at. What was learned on the way:

- copy blocks of random length 8-64 at rate 1e-3: no copying after 850 steps;
- copy blocks of a fixed length 32: 100% "copy accuracy" by step 300, but through a positional
  shortcut (attend 31 tokens back), useless for retrieval at other distances;
- varied blocks (16-48) at rate 3e-3, unclipped: content-based copying emerges at step 850-900
  (the defaults below);
- starting the mixed phase with a fresh optimizer warming up to the copy rate wiped the copy
  circuit out; a lower rate with a short warm-up keeps it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ropestretch.errors import UsageError


@dataclass
class PretrainConfig:
    out: str = "models/tiny-llama-256"
    window: int = 256
    vocab_size: int = 512
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 512
    rope_theta: float = 10000.0
    copy_steps: int = 1100
    mix_steps: int = 1800
    batch_size: int = 16
    copy_lr: float = 3e-3
    lr: float = 1e-3
    warmup_steps: int = 100
    mix: str = "text=0.3,copy=0.2,passkey=0.2,needle=0.1,lines=0.15,kv=0.05"
    seed: int = 0
    threads: int = 2
    progress: bool = True


def parse_mix(text: str) -> dict[str, float]:
    parts = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name.strip() not in ("text", "copy", "passkey", "needle", "lines", "kv"):
            raise UsageError(f"unknown mix component {name!r} (text, copy, passkey, needle, lines, kv)")
        try:
            parts[name.strip()] = float(weight)
        except ValueError:
            raise UsageError(f"mix weight for {name!r} must be a number, got {weight!r}") from None
    total = sum(parts.values())
    if total <= 0:
        raise UsageError("mix weights must add up to more than 0")
    return {k: v / total for k, v in parts.items()}


def build_tokenizer(cfg: PretrainConfig, docs: list[str]):
    """BPE on the prose plus samples of every synthetic format, so their words are single tokens."""
    from ropestretch.data.corpus import train_tokenizer
    from ropestretch.data.tasks import ADJECTIVES, CITIES, NOUNS

    formats = [
        "The pass key is 12345. Remember it. 12345 is the pass key. What is the pass key? The pass key is",
        "The magic number of Oslo is 1234567. What is the magic number of Oslo?",
        "Below is a record of lines I want you to remember.\nline amber-anchor: REGISTER_CONTENT is <12345>\n"
        "The REGISTER_CONTENT in line amber-anchor is",
        'JSON data:\n{"0f8e1c2a-9b3d-4e5f-a6b7-c8d9e0f1a2b3": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"}\n'
        'Key: "0f8e1c2a-9b3d-4e5f-a6b7-c8d9e0f1a2b3"\nThe value of the key is: "',
        " ".join(ADJECTIVES + NOUNS + CITIES),
    ]
    return train_tokenizer(docs + formats * 200, vocab_size=cfg.vocab_size)


def training_rows(kind: str, count: int, tokenizer, haystack, text_stream: list[int], window: int,
                  rng: np.random.Generator) -> list[list[int]]:
    """``count`` rows of exactly ``window`` tokens of one kind."""
    from ropestretch.data import tasks

    rows = []
    eos = tokenizer.eos_token_id
    special = len(tokenizer.all_special_ids)
    for _ in range(count):
        if kind == "text":
            start = int(rng.integers(0, len(text_stream) - window))
            rows.append(text_stream[start:start + window])
            continue
        if kind == "copy":  # varied lengths: fixed ones teach a positional shortcut, not content matching
            rows.append(tasks.copy_sequence(window, special, len(tokenizer), rng, 16, 48))
            continue
        length = int(rng.integers(window // 4, window - 8))
        if kind in ("passkey", "needle"):
            sample = getattr(tasks, kind)(tokenizer, haystack, length, float(rng.uniform(0, 100)), rng)
        elif kind == "lines":
            sample = tasks.lines(tokenizer, max(length, 160), rng)
        else:
            sample = tasks.kv(tokenizer, window - 8, float(rng.uniform(0, 1)), rng)
        ids = sample.prompt_ids + sample.answer_ids + [eos]
        filler, _ = haystack.fill(window, rng)
        rows.append((ids + [eos] + filler)[:window])
    return rows


def probe(model, tokenizer, haystack, window: int, n: int = 20) -> dict[str, float]:
    """Copy accuracy on repeated 32-token blocks, and teacher-forced passkey accuracy inside the window."""
    import torch

    from ropestretch.data import tasks
    from ropestretch.eval.scoring import forced_correct

    rng = np.random.default_rng(12345)
    special = len(tokenizer.all_special_ids)
    model.eval()
    with torch.no_grad():
        x = torch.tensor([tasks.copy_sequence(window, special, len(tokenizer), rng, 32, 32) for _ in range(8)])
        copy = float((model(input_ids=x).logits[:, 31:-1].argmax(-1) == x[:, 32:]).float().mean())
        keys = [tasks.passkey(tokenizer, haystack, window - 8, float(d), rng) for d in np.linspace(0, 100, n)]
        key = float(np.mean(forced_correct(model, keys, tokenizer.pad_token_id or 0)))
    model.train()
    return {"copy_accuracy": round(copy, 3), "passkey_accuracy": round(key, 3)}


def pretrain(cfg: PretrainConfig) -> Path:
    import torch
    from datasets import Dataset
    from transformers import (LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments,
                              default_data_collator)

    from ropestretch.data.corpus import builtin_documents
    from ropestretch.data.tasks import Haystack

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} already exists and is not empty; choose a new --out")
    torch.set_num_threads(cfg.threads)
    mix = parse_mix(cfg.mix)
    rng = np.random.default_rng(cfg.seed)
    started = time.time()
    docs = builtin_documents()
    tokenizer = build_tokenizer(cfg, docs)
    haystack = Haystack(tokenizer, docs)
    eos = tokenizer.eos_token_id
    text_stream = [t for piece in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in piece + [eos]]

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.window, rope_parameters={"rope_type": "default",
                                                                              "rope_theta": cfg.rope_theta},
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())

    def phase(name: str, rows: list[list[int]], steps: int, log: list[dict], schedule: str, lr: float,
              warmup: int, clip: float = 1.0) -> None:
        data = Dataset.from_dict({"input_ids": rows, "labels": rows})
        args = TrainingArguments(output_dir=str(out / ".tmp"), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                                 learning_rate=lr, warmup_steps=warmup, lr_scheduler_type=schedule, max_grad_norm=clip,
                                 weight_decay=0.01, logging_steps=50, save_strategy="no", report_to=[],
                                 use_cpu=True, seed=cfg.seed, disable_tqdm=not cfg.progress)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
        trainer.train()
        log.extend({"phase": name, **r} for r in trainer.state.log_history)
        log.append({"phase": name, "probe": probe(model, tokenizer, haystack, cfg.window)})
        if cfg.progress:
            print(f"after {name}: {log[-1]['probe']}", flush=True)

    log: list[dict] = []
    n_copy = cfg.copy_steps * cfg.batch_size
    phase("copy", training_rows("copy", n_copy, tokenizer, haystack, text_stream, cfg.window, rng),
          cfg.copy_steps, log, "constant_with_warmup", cfg.copy_lr, cfg.warmup_steps, clip=0.0)  # as measured
    n_mix = cfg.mix_steps * cfg.batch_size
    counts = {k: int(round(v * n_mix)) for k, v in mix.items()}
    rows: list[list[int]] = []
    for kind, count in counts.items():
        rows.extend(training_rows(kind, count, tokenizer, haystack, text_stream, cfg.window, rng))
    # a fresh optimizer warming up to the copy rate again wiped the circuit out: a lower rate, short warm-up
    phase("mix", rows, cfg.mix_steps, log, "cosine", cfg.lr, 20)

    import shutil

    shutil.rmtree(out / ".tmp", ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record: dict[str, Any] = {"recipe": asdict(cfg), "parameters": params, "seconds": round(time.time() - started, 1),
                              "mix_rows": counts, "log": log}
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
