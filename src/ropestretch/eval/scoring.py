"""Scoring retrieval prompts: teacher-forced (one forward pass, argmax over the answer span) or by
greedy generation and string match. Prompts are batched; equal lengths need no padding."""

from __future__ import annotations

from typing import Sequence

import torch

from ropestretch.data.tasks import TaskSample, score_text


def _pad(rows: Sequence[Sequence[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if left:
            ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
        else:
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


@torch.no_grad()
def forced_hits(model, samples: Sequence[TaskSample], pad: int = 0) -> list[list[bool]]:
    """Per sample, per answer token: does the argmax at that position equal it? One pass."""
    rows = [s.prompt_ids + s.answer_ids for s in samples]
    ids, mask = _pad(rows, pad, left=False)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    out = []
    for i, s in enumerate(samples):
        start = len(s.prompt_ids)
        pred = logits[i, start - 1: start - 1 + len(s.answer_ids)].argmax(-1)
        out.append((pred == torch.tensor(s.answer_ids)).tolist())
    return out


def forced_correct(model, samples: Sequence[TaskSample], pad: int = 0) -> list[bool]:
    """Per sample: does the argmax at every answer position equal the answer token? One pass."""
    return [all(hits) for hits in forced_hits(model, samples, pad)]


@torch.no_grad()
def generated_correct(model, tokenizer, samples: Sequence[TaskSample], max_new_tokens: int | None = None,
                      pad: int = 0) -> tuple[list[bool], list[str]]:
    """Per sample: greedy generation, then string match (first integer, or substring)."""
    ids, mask = _pad([s.prompt_ids for s in samples], pad, left=True)
    budget = max_new_tokens or max(len(s.answer_ids) for s in samples) + 4
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                         pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [score_text(s.task, s.answer, t) for s, t in zip(samples, texts)], texts
