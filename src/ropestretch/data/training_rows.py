"""Generated training rows (:data:`ROW_SOURCES`): a registry of small functions, each making
``count`` rows of exactly ``length`` tokens from ``seed`` with a tokenizer, and declaring its own
options, for a study plan's training text (``texts: {train: {rows: NAME, ...}}``) and the demo.

- ``mix``: prose, the copy curriculum and retrieval samples (passkey, needle, LongChat-Lines, kv)
  in their base form, question and answer at the row's end (the demo's rows);
- ``chat-retrieval``: passkey and needle prompts in the chat template's form with their answer,
  the rest of the row prose (the first SmolLM2 study's rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ropestretch.errors import UsageError
from ropestretch.options import Option, add_entry, option_values


@dataclass(frozen=True)
class RowSource:
    name: str
    make: Callable[..., list[dict[str, Any]]]  # (tokenizer, length, count, seed, **options) -> [{input_ids, kind}]
    options: tuple[Option, ...]
    summary: str


ROW_SOURCES: dict[str, RowSource] = {}


def register_rows(source: RowSource) -> RowSource:
    return add_entry(ROW_SOURCES, source, "training rows")


def make_rows(name: str, tokenizer, length: int, count: int, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """``count`` rows ``{"input_ids": [...], "kind": ...}`` of ``length`` tokens from source ``name``."""
    if name not in ROW_SOURCES:
        raise UsageError(f"unknown training rows {name!r} (one of {', '.join(ROW_SOURCES)})")
    source = ROW_SOURCES[name]
    values = option_values(source.options, options, f"training rows {name!r}")
    return source.make(tokenizer, int(length), int(count), int(seed), **values)


def check_mix(mix: dict[str, float], allowed: tuple[str, ...]) -> np.ndarray:
    """The mix's weights as probabilities, or one line for what is wrong with it."""
    if not isinstance(mix, dict) or not mix or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0
                                                   for w in mix.values()) or not sum(mix.values()) > 0:
        raise UsageError("the mix must map a row kind to a non-negative weight, some positive")
    unknown = sorted(set(mix) - set(allowed))
    if unknown:
        raise UsageError(f"unknown training task {unknown[0]!r} in the mix (one of {', '.join(allowed)})")
    weights = np.array(list(mix.values()), dtype=float)
    return weights / weights.sum()


def mixed_rows(tokenizer, length: int, count: int, seed: int, mix: dict[str, float], needles: int = 1) -> list[dict]:
    """Prose (``text``), the copy curriculum (``copy``) and retrieval samples whose question and
    answer end the row (so under CREAM they sit in the tail segment, the needle anywhere before).
    ``needles > 1``: needle rows hold 1 to ``needles`` needles, all asked (:func:`tasks.needles_row`)."""
    from ropestretch.data import tasks
    from ropestretch.data.corpus import builtin_documents

    needles = tasks.check_needles(needles)
    p = check_mix(mix, ("text", "copy", *tasks.TRAINING_TASKS))
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(mix), size=count, p=p)
    haystack = tasks.Haystack(tokenizer, builtin_documents())
    rows = []
    for kind in kinds:
        if kind == "text":
            ids = haystack.fill(length, rng)[0]
        elif kind == "copy":  # repeated random blocks, as in the base's copy curriculum
            ids = tasks.copy_row(tokenizer, length, rng)
        elif kind == "needle" and needles > 1:
            ids = tasks.needles_row(tokenizer, haystack, length, rng, needles)
        else:
            body = tasks.training_sample(kind, tokenizer, haystack, length, rng)
            filler = haystack.fill(max(0, length - len(body)), rng)[0] if len(body) < length else []
            ids = (filler + body)[-length:]
        rows.append({"input_ids": [int(t) for t in ids], "kind": str(kind)})
    return rows


def chat_retrieval_rows(tokenizer, length: int, count: int, seed: int, mix: dict[str, float]) -> list[dict]:
    """A chat-format passkey or needle prompt (the evaluation's own form, at a random depth and a
    length from half the row to the row less 16) with its answer and the turn's end, the rest of the
    row prose; or a row of prose (``prose``)."""
    from ropestretch.data import tasks
    from ropestretch.data.prompts import prompt_format

    p = check_mix(mix, ("passkey", "needle", "prose"))
    prompt = prompt_format(tokenizer, "chat")
    haystack = tasks.Haystack(tokenizer)
    rng = np.random.default_rng(seed)
    kinds = list(mix)
    end = list(prompt.assistant_prefix[:1])  # the turn's end token (<|im_end|>)
    rows = []
    for _ in range(count):
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        if kind == "prose":
            ids = haystack.fill(length, rng)[0]
        else:
            size = int(rng.integers(length // 2, length - 16))
            make = tasks.passkey if kind == "passkey" else tasks.needle
            sample = make(tokenizer, haystack, size, float(rng.uniform(0, 100)), rng, prompt)
            ids = sample.prompt_ids + sample.answer_ids + end
            ids += haystack.fill(length - len(ids), rng)[0]
        rows.append({"input_ids": [int(t) for t in ids[:length]], "kind": kind})
    return rows


_MIX = "row kinds and their weights"
register_rows(RowSource("mix", mixed_rows, (
    Option("mix", lambda: {"text": 1.0}, f"{_MIX}: text, copy, passkey, needle, lines, kv"),
    Option("needles", 1, "needles per needle row: 1 to this many, each asked at the row's end", kind="int")),
    "prose, the copy curriculum and retrieval samples in their base form, asked at the row's end"))
register_rows(RowSource("chat-retrieval", chat_retrieval_rows, (
    Option("mix", lambda: {"passkey": 0.35, "needle": 0.35, "prose": 0.3}, f"{_MIX}: passkey, needle, prose"),),
    "passkey and needle prompts in the chat template's form with their answer, and prose"))
