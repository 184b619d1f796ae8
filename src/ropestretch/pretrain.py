"""Pre-train the small base model that ships with ropestretch, from scratch, on 2 CPU cores.

A Llama-architecture model with window ``N = 256`` on text that needs no download (the English
that ships with Python), mixed with the synthetic retrieval formats, so that inside its window
it retrieves a pass key and a line's value, and beyond it collapses: the starting point the
methods exist to fix. Retrieval rests on copying (induction heads), which a small model learns
slowly from text alone, so the curriculum teaches copying first:

1. ``copy_steps`` on repeated random token blocks;
2. ``mix_steps`` on a mix of prose, copy blocks and passkey / needle / LongChat-Lines samples;
3. ``focus_steps`` at a lower rate on a mix weighted further towards retrieval;
4. ``anneal_steps`` at a lower rate still, weighted towards the needle and Lines (the 7-digit needle
   number is the longest value the base copies, and its slips carry into every extended variant).

The tokenizer is a 512-token BPE trained on the prose plus the task formats (weighted), so a
LongChat-Lines record takes about 20 tokens instead of 34. Retrieval rows fill the window half of
the time (a key at depth 0 is the longest reach), and Lines rows ask 1 to 4 questions each.

``--cache DIR`` keeps each phase's model, keyed by every setting it depends on, so a rerun that
changes only a later phase (say the focus mix) starts from the cached earlier ones.

What was learned on the way (2 CPU cores; figures in models/tiny-llama-256/README.md):

- copy blocks of random length 8-64 at rate 1e-3: no copying after 850 steps;
- copy blocks of a fixed length 32: 100% "copy accuracy" by step 300, but through a positional
  shortcut (attend 31 tokens back), useless for retrieval at other distances;
- varied blocks (16-48) at rate 3e-3, unclipped: content-based copying emerges at step 850-950
  (the defaults below); kept at that rate to step 1400, the loss diverged again after step 1100;
- starting the mixed phase with a fresh optimizer warming up to the copy rate wiped the circuit out; a
  lower rate with a short warm-up keeps it;
- with the prose-only tokenizer, single-question Lines rows and 1800 mixed steps: 68% passkey, 10%
  Lines inside the window; the format-weighted tokenizer, multi-question rows and 3000 mixed steps:
  90% passkey, 48% Lines; a focus phase of 1500 steps: 93% and 58%; of 8000 steps: 98% and 82%
  (200 samples); of 16000 steps: 98% and 90% (88.4% over 800 samples), at the 90% aimed at but not
  beyond it, and the needle 90%: its misses were slips on the later digits of the 7-digit number,
  which every extended variant inherits (CREAM under YaRN at 8x read about 75% needle at 2048);
- an anneal phase of 8000 steps at 3e-4 weighted towards the needle and Lines (the defaults): 100%
  passkey, 97% needle, 90% Lines inside the window;
- numbers cut into two-digit tokens (``--digit-group 2``): copying the value got easier, finding its
  line much harder (14% Lines after the mixed phase against 41%; ``benchmarks/answer_errors.py``).
"""

from __future__ import annotations

import hashlib
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
    format_weight: int = 10
    digit_group: int = 1  # digits per number token: 2 cuts a 5-digit value into 3 tokens
    copy_steps: int = 1100
    mix_steps: int = 3000
    batch_size: int = 16
    copy_lr: float = 3e-3
    lr: float = 1e-3
    warmup_steps: int = 100
    mix: str = "text=0.2,copy=0.1,passkey=0.25,needle=0.15,lines=0.3"
    focus_steps: int = 16000
    focus_lr: float = 5e-4
    focus_mix: str = "text=0.1,copy=0.05,passkey=0.2,needle=0.2,lines=0.45"
    anneal_steps: int = 8000
    anneal_lr: float = 3e-4
    anneal_mix: str = "text=0.05,copy=0.05,passkey=0.1,needle=0.4,lines=0.4"
    seed: int = 0
    threads: int = 2
    progress: bool = True
    cache: str = ""  # a folder to save each phase's model in, reused by a rerun that agrees on that phase

    def recipe(self) -> dict[str, Any]:
        """Every setting the checkpoint depends on (not where it goes, the cache, or the progress bar)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "cache", "progress")}


# what each phase depends on (with every earlier phase's): a --cache phase is reused only when all agree
PHASE_FIELDS = {
    "copy": ("window", "vocab_size", "hidden_size", "layers", "heads", "intermediate_size", "rope_theta",
             "copy_steps", "batch_size", "copy_lr", "warmup_steps", "seed", "threads"),
    "mix": ("format_weight", "digit_group", "mix", "mix_steps", "lr"),
    "focus": ("focus_mix", "focus_steps", "focus_lr"),
    "anneal": ("anneal_mix", "anneal_steps", "anneal_lr"),
}


def parse_mix(text: str) -> dict[str, float]:
    parts = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name.strip() not in ("text", "copy", "passkey", "needle", "lines"):  # kv: two UUID pairs fill 256 tokens
            raise UsageError(f"unknown mix component {name!r} (text, copy, passkey, needle, lines)")
        try:
            parts[name.strip()] = float(weight)
        except ValueError:
            raise UsageError(f"mix weight for {name!r} must be a number, got {weight!r}") from None
    total = sum(parts.values())
    if total <= 0:
        raise UsageError("mix weights must add up to more than 0")
    return {k: v / total for k, v in parts.items()}


def build_tokenizer(cfg: PretrainConfig, docs: list[str]):
    """BPE on the prose plus every synthetic format (each line name, each needle city), repeated
    ``cfg.format_weight`` times, so their words take few tokens: with the prose alone a LongChat-Lines
    record is 34 tokens ("REGISTER_CONTENT" alone is 14), with weight 10 it is about 20, and the
    prose compresses as well as before (1.99 against 2.03 characters per token)."""
    from ropestretch.data.corpus import train_tokenizer
    from ropestretch.data.tasks import ADJECTIVES, CITIES, NEEDLE, NEEDLE_QUESTION, NOUNS

    formats = ["Below is a record of lines I want you to remember.\n"
               + "".join(f"line {a}-{n}: REGISTER_CONTENT is <12345>\n" for n in NOUNS)
               + f"The REGISTER_CONTENT in line {a}-{NOUNS[0]} is" for a in ADJECTIVES]
    formats += [NEEDLE.format(city=c, number=1234567) + NEEDLE_QUESTION.format(city=c) for c in CITIES]
    formats += [" The pass key is 12345. Remember it. 12345 is the pass key. What is the pass key? The pass key is",
                'JSON data:\n{"0f8e1c2a-9b3d-4e5f-a6b7-c8d9e0f1a2b3": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"}\n'
                'Key: "0f8e1c2a-9b3d-4e5f-a6b7-c8d9e0f1a2b3"\nThe value of the key is: "']
    return train_tokenizer(docs + formats * cfg.format_weight, vocab_size=cfg.vocab_size, digit_group=cfg.digit_group)


def training_rows(kind: str, count: int, tokenizer, haystack, text_stream: list[int], window: int,
                  rng: np.random.Generator) -> list[list[int]]:
    """``count`` rows of exactly ``window`` tokens of one kind.

    Retrieval rows are full-window samples half of the time (the longest distances, a key at depth 0
    about ``window`` tokens before its question, are the hardest) and of a random length otherwise,
    then filled with prose. LongChat-Lines rows ask 1 to 4 of their lines, for more answers per row.
    """
    from ropestretch.data import tasks

    rows = []
    for _ in range(count):
        if kind == "text":
            start = int(rng.integers(0, len(text_stream) - window))
            rows.append(text_stream[start:start + window])
            continue
        if kind == "copy":
            rows.append(tasks.copy_row(tokenizer, window, rng))
            continue
        length = window - 1 if rng.random() < 0.5 else int(rng.integers(window // 2, window - 1))
        questions = int(rng.integers(1, 5)) if kind == "lines" else 1
        if kind == "lines" and questions > 1:
            length = window - 1  # too few lines fit in less
        elif kind == "lines":
            length = max(length, window // 2)
        ids = tasks.training_sample(kind, tokenizer, haystack, length, rng, questions)
        filler, _ = haystack.fill(window, rng)
        rows.append((ids + filler)[:window])
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
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, default_data_collator

    from ropestretch.data.corpus import builtin_documents
    from ropestretch.data.tasks import Haystack
    from ropestretch.data.corpus import token_stream

    from ropestretch.paths import named_path

    out = named_path(cfg.out, "--out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} already exists and is not empty; choose a new --out")
    if cfg.cache and Path(cfg.cache).exists() and not Path(cfg.cache).is_dir():
        raise UsageError(f"--cache {cfg.cache} is a file; give a folder")
    torch.set_num_threads(cfg.threads)
    mix, focus, anneal = parse_mix(cfg.mix), parse_mix(cfg.focus_mix), parse_mix(cfg.anneal_mix)
    rng = np.random.default_rng(cfg.seed)
    started = time.time()
    docs = builtin_documents()
    tokenizer = build_tokenizer(cfg, docs)
    haystack = Haystack(tokenizer, docs)
    eos = tokenizer.eos_token_id
    text_stream = token_stream(tokenizer, docs)

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

    # per phase: steps, mix, schedule, rate, warm-up, clipping. The copy phase is unclipped, as measured;
    # a fresh optimizer warming up to the copy rate again wiped the circuit out: lower rates, short warm-ups
    phases = {"copy": (cfg.copy_steps, {"copy": 1.0}, "constant_with_warmup", cfg.copy_lr, cfg.warmup_steps, 0.0),
              "mix": (cfg.mix_steps, mix, "cosine", cfg.lr, 20, 1.0),
              "focus": (cfg.focus_steps, focus, "cosine", cfg.focus_lr, 20, 1.0),
              "anneal": (cfg.anneal_steps, anneal, "cosine", cfg.anneal_lr, 20, 1.0)}
    # every row is drawn before training starts, in phase order: a bad mix fails at once, a cached
    # phase leaves the random stream of the later ones as it was
    rows: dict[str, list[list[int]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name, (steps, weights, *_) in phases.items():
        counts[name] = {k: int(round(v * steps * cfg.batch_size)) for k, v in weights.items()}
        rows[name] = [r for kind, count in counts[name].items()
                      for r in training_rows(kind, count, tokenizer, haystack, text_stream, cfg.window, rng)]
    log: list[dict] = []
    identity: dict[str, Any] = {"vocab": len(tokenizer)}
    cache = Path(cfg.cache) if cfg.cache else None
    for name, (steps, _, schedule, lr, warmup, clip) in phases.items():
        identity |= {k: getattr(cfg, k) for k in PHASE_FIELDS[name]}
        key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        saved = cache / f"{name}-{key}" if cache is not None else None
        if saved is not None and (saved / "phase.json").is_file():
            model = LlamaForCausalLM.from_pretrained(saved)
            log.extend(json.loads((saved / "phase.json").read_text())["log"])
            if cfg.progress:
                print(f"{name} phase reused from {saved}", flush=True)
            continue
        if steps > 0:
            phase(name, rows[name], steps, log, schedule, lr, warmup, clip)
        if saved is not None:
            model.save_pretrained(saved, safe_serialization=True)
            tokenizer.save_pretrained(saved)  # a phase folder loads like any model (benchmarks/answer_errors.py)
            phase_log = [r for r in log if r["phase"] == name]
            (saved / "phase.json").write_text(json.dumps({"identity": identity, "log": phase_log}, indent=2) + "\n")

    import shutil

    shutil.rmtree(out / ".tmp", ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    train_seconds = sum(r["train_runtime"] for r in log if "train_runtime" in r)  # cached phases included
    record: dict[str, Any] = {"recipe": cfg.recipe(), "parameters": params, "train_seconds": round(train_seconds, 1),
                              "seconds_this_run": round(time.time() - started, 1), "rows": counts, "log": log}
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
