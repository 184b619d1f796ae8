"""Scoring retrieval prompts: teacher-forced (argmax over the answer span) or by greedy generation
and string match. Either way every sample also gets the gold answer's teacher-forced
log-likelihood, the continuous measure LongRoPE2 calls needle-driven perplexity, which separates
models that a right/wrong count cannot. Long prompts are prefilled through the KV cache in chunks,
with logits only over the answer (:mod:`ropestretch.eval.prefill`)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ropestretch.data.tasks import TaskSample
from ropestretch.eval.prefill import answer_logits, can_crop, crop_to, new_cache, prefill


@dataclass(frozen=True)
class Scored:
    """One sample's result: right or wrong, and the gold answer's teacher-forced log-likelihood
    (natural log, summed over its ``tokens`` tokens). ``hits``: per answer token, whether the argmax
    there is the answer token (the forced score is their conjunction)."""

    correct: bool
    logprob: float
    tokens: int
    hits: tuple[bool, ...] = ()
    score: float | None = None  # RULER's share of the references found (a task with references)


def fingerprint(prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> str:
    """A short hash of a prompt and its answer, token for token: two runs pair a sample only if
    theirs agree (another seed, tokenizer or prompt form gives another one)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(",".join(map(str, prompt_ids)).encode())
    h.update(b"|" + ",".join(map(str, answer_ids)).encode())
    return h.hexdigest()


def _pad_right(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def _answer_scores(logits: torch.Tensor, answers: Sequence[Sequence[int]]) -> list[tuple[tuple[bool, ...], float]]:
    """Per row of ``logits`` ``(batch, A, vocab)`` over right-padded answers: the argmax hits on the
    row's own answer tokens and the answer's summed log-probability (computed in float32)."""
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    pred = logp.argmax(-1)
    out = []
    for row, answer in enumerate(answers):
        gold = torch.tensor(answer)
        n = len(answer)
        out.append((tuple((pred[row, :n] == gold).tolist()), float(logp[row, torch.arange(n), gold].sum())))
    return out


def _by_length(samples: Sequence[TaskSample]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(len(s.prompt_ids), []).append(i)
    return groups


@torch.no_grad()
def forced_scores(model, samples: Sequence[TaskSample], pad: int = 0, cache=None) -> list[Scored]:
    """Teacher-forced: right when the argmax at every answer position is the answer token.

    Samples of one prompt length share one chunked prefill; answers of different lengths are padded
    on the right (a padded position only follows the real ones, so it changes none of them).
    ``cache``: tokens that precede every prompt (the needle sweep's shared prefix), left as it was.
    """
    out: list[Scored | None] = [None] * len(samples)
    device = next(model.parameters()).device
    for indices in _by_length(samples).values():
        answers = [samples[i].answer_ids for i in indices]
        prompt = torch.tensor([samples[i].prompt_ids for i in indices], device=device)
        held = cache.get_seq_length() if cache is not None else 0
        logits = answer_logits(model, prompt, _pad_right(answers, pad).to(device), cache)
        if cache is not None:
            crop_to(cache, held)
        for i, (hits, logprob) in zip(indices, _answer_scores(logits, answers)):
            out[i] = Scored(all(hits), logprob, len(hits), hits)
    return out  # type: ignore[return-value]


def forced_correct(model, samples: Sequence[TaskSample], pad: int = 0) -> list[bool]:
    """Per sample: does the argmax at every answer position equal the answer token?"""
    return [s.correct for s in forced_scores(model, samples, pad)]


@torch.no_grad()
def generate_after(model, tokenizer, prompt: torch.Tensor, cache, max_new_tokens: int | Sequence[int],
                   pad: int) -> list[str]:
    """Greedy continuations of ``prompt`` ``(batch, P)``, the first tokens of which ``cache`` may
    already hold: the rest but the last token is prefilled in chunks, then ``generate`` continues.
    ``max_new_tokens`` per row keeps each row's text to its own budget, whatever else is batched."""
    from ropestretch.eval.prefill import cache_kwargs

    held = cache.get_seq_length()
    if prompt.shape[1] - 1 > held:
        prefill(model, prompt[:, held:-1], cache)
    budgets = [max_new_tokens] * prompt.shape[0] if isinstance(max_new_tokens, int) else list(max_new_tokens)
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **cache_kwargs(model, cache),
                         max_new_tokens=max(budgets), do_sample=False, pad_token_id=pad,
                         eos_token_id=tokenizer.eos_token_id)
    new = out[:, prompt.shape[1]:]
    return [tokenizer.decode(row[:budget], skip_special_tokens=True) for row, budget in zip(new, budgets)]


@torch.no_grad()
def generate_scored(model, tokenizer, prompt: torch.Tensor, answers: Sequence[Sequence[int]], cache, pad: int,
                    max_new_tokens: int | Sequence[int] | None = None
                    ) -> tuple[list[tuple[tuple[bool, ...], float]], list[str]]:
    """The gold answers' forced scores and the greedy continuations of ``prompt`` ``(batch, P)``, whose
    first tokens ``cache`` may already hold; the cache is left holding just those. One prefill
    serves both: the answer is scored on top of it, cropped off, and generation continues there
    (a cache that cannot be cropped, of a sliding-window model, is copied for the scoring instead)."""
    held = cache.get_seq_length()
    padded = _pad_right(answers, pad).to(prompt.device)
    budgets = list(max_new_tokens) if isinstance(max_new_tokens, Sequence) else \
        [max_new_tokens or len(a) + 4 for a in answers]
    if can_crop(cache):
        forced = _answer_scores(answer_logits(model, prompt[:, held:], padded, cache), answers)
        crop_to(cache, prompt.shape[1] - 1)  # the prompt but its last token, where generate_after continues
        texts = generate_after(model, tokenizer, prompt, cache, budgets, pad)
        crop_to(cache, held)
        return forced, texts
    if prompt.shape[1] - 1 > held:
        prefill(model, prompt[:, held:-1], cache)
    forced = _answer_scores(answer_logits(model, prompt[:, -1:], padded, copy.deepcopy(cache)), answers)
    return forced, generate_after(model, tokenizer, prompt, cache, budgets, pad)


@torch.no_grad()
def generated_scores(model, tokenizer, samples: Sequence[TaskSample], max_new_tokens: int | None = None,
                     pad: int = 0) -> tuple[list[Scored], list[str]]:
    """Greedy generation, then string match (first integer, or substring); with each sample's
    forced answer log-likelihood from the same prefill. Prompts of one length run as one batch;
    each sample's text is its first ``max_new_tokens`` tokens (default: its own budget, else its
    answer's length + 4)."""
    device = next(model.parameters()).device
    scored: list[Scored | None] = [None] * len(samples)
    texts: list[str] = [""] * len(samples)
    for indices in _by_length(samples).values():
        prompt = torch.tensor([samples[i].prompt_ids for i in indices], device=device)
        answers = [samples[i].answer_ids for i in indices]
        budgets = [max_new_tokens or samples[i].max_new_tokens for i in indices]
        forced, generated = generate_scored(model, tokenizer, prompt, answers, new_cache(model), pad, budgets)
        for i, (hits, logprob), text in zip(indices, forced, generated):
            correct, share = samples[i].judge(text)
            scored[i] = Scored(correct, logprob, len(hits), hits, share)
            texts[i] = text
    return scored, texts  # type: ignore[return-value]
