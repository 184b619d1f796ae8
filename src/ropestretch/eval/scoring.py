"""Scoring retrieval prompts: teacher-forced (argmax over the answer span) or by greedy generation
and string match. Prompts of equal length are batched; long ones are prefilled through the KV
cache in chunks, with logits only over the answer (:mod:`ropestretch.eval.prefill`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ropestretch.data.tasks import TaskSample, score_text
from ropestretch.eval.prefill import answer_logits, cache_kwargs, new_cache, prefill


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


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def forced_hits(model, samples: Sequence[TaskSample], pad: int = 0) -> list[list[bool]]:
    """Per sample, per answer token: does the argmax at that position equal it?

    Samples of one prompt length share one chunked prefill; answers of different lengths are padded
    on the right (a padded position only follows the real ones, so it changes none of them).
    """
    out: list[list[bool]] = [[] for _ in samples]
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_length.setdefault(len(s.prompt_ids), []).append(i)
    device = _device(model)
    for indices in by_length.values():
        prompt = torch.tensor([samples[i].prompt_ids for i in indices], device=device)
        answers, _ = _pad([samples[i].answer_ids for i in indices], pad, left=False)
        pred = answer_logits(model, prompt, answers.to(device)).argmax(-1).cpu()
        for row, i in enumerate(indices):
            n = len(samples[i].answer_ids)
            out[i] = (pred[row, :n] == torch.tensor(samples[i].answer_ids)).tolist()
    return out


def forced_correct(model, samples: Sequence[TaskSample], pad: int = 0) -> list[bool]:
    """Per sample: does the argmax at every answer position equal the answer token?"""
    return [all(hits) for hits in forced_hits(model, samples, pad)]


@torch.no_grad()
def generate_after(model, tokenizer, prompt: torch.Tensor, cache, max_new_tokens: int, pad: int) -> list[str]:
    """Greedy continuations of ``prompt`` ``(batch, P)``, the first tokens of which ``cache`` may
    already hold: the rest but the last token is prefilled in chunks, then ``generate`` continues."""
    held = cache.get_seq_length()
    if prompt.shape[1] - 1 > held:
        prefill(model, prompt[:, held:-1], cache)
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **cache_kwargs(model, cache),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                         eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, prompt.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def generated_correct(model, tokenizer, samples: Sequence[TaskSample], max_new_tokens: int | None = None,
                      pad: int = 0) -> tuple[list[bool], list[str]]:
    """Per sample: greedy generation, then string match (first integer, or substring)."""
    budget = max_new_tokens or max(len(s.answer_ids) for s in samples) + 4
    device = _device(model)
    if len({len(s.prompt_ids) for s in samples}) == 1:  # the usual case: one chunked prefill for all
        prompt = torch.tensor([s.prompt_ids for s in samples], device=device)
        texts = generate_after(model, tokenizer, prompt, new_cache(model), budget, pad)
    else:
        ids, mask = _pad([s.prompt_ids for s in samples], pad, left=True)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=budget,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [score_text(s.task, s.answer, t) for s, t in zip(samples, texts)], texts
