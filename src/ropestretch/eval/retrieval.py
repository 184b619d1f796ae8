"""Retrieval sweeps: passkey and needle (length x depth), LongChat-Lines (length), key-value
retrieval (length x gold position). Every cell draws its samples from (seed, cell), so a cell's
result does not depend on which other cells run, and a rerun skips finished cells.

Each cell's result row keeps its samples one by one (:func:`sample_rows`): index, right or wrong,
the gold answer's log-likelihood and a fingerprint of the prompt, so that two run folders built
with the same seed pair up sample by sample (:mod:`ropestretch.stats`)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ropestretch.data import tasks
from ropestretch.data.tasks import TaskSample
from ropestretch.eval.prefill import can_crop, crop_to, new_cache, prefill
from ropestretch.eval.scoring import Scored, fingerprint, forced_scores, generate_scored, generated_scores
from ropestretch.eval.store import RunStore


@dataclass
class Evaluator:
    """A model, its tokenizer, and how to score: ``forced`` (one pass) or ``generate``."""

    model: Any
    tokenizer: Any
    scoring: str = "forced"
    batch_size: int = 8
    haystack: Any = None
    progress: Any = None  # a tqdm bar or None
    prompt: Any = None  # a PromptFormat; None is the legacy wording

    @property
    def pad(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)

    def score(self, samples: Sequence[TaskSample]) -> list[Scored]:
        """Each sample's result and answer log-likelihood, batching prompts of equal length together."""
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            by_length.setdefault(len(s.prompt_ids), []).append(i)
        scored: list[Scored | None] = [None] * len(samples)
        for indices in by_length.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = [samples[i] for i in chunk]
                if self.scoring == "forced":
                    result = forced_scores(self.model, batch, self.pad)
                else:
                    result, _ = generated_scores(self.model, self.tokenizer, batch, pad=self.pad)
                for i, one in zip(chunk, result):
                    scored[i] = one
        return scored  # type: ignore[return-value]

    def tick(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.update(n)


def cell_rng(seed: int, test: str, *cell: float) -> np.random.Generator:
    """A generator for one cell, independent of every other cell."""
    return np.random.default_rng([seed, zlib.crc32(test.encode()), *[int(round(c * 1000)) for c in cell]])


def sample_rows(scored: Sequence[Scored], prints: Sequence[str]) -> list[dict]:
    """The per-sample part of a result row: index, right or wrong, the gold answer's summed
    log-likelihood and token count, and the prompt's fingerprint."""
    return [{"i": i, "correct": s.correct, "logprob": round(s.logprob, 5), "tokens": s.tokens, "prompt": p}
            for i, (s, p) in enumerate(zip(scored, prints))]


def _record(store: RunStore, cell: dict, scored: Sequence[Scored], prints: Sequence[str], seed: int,
            seconds: float) -> dict:
    correct = [s.correct for s in scored]
    return store.add(cell, accuracy=float(np.mean(correct)), correct=int(sum(correct)), n=len(correct),
                     seconds=round(seconds, 3), seed=seed, samples=sample_rows(scored, prints))


def sweep(ev: Evaluator, store: RunStore, cells: list[dict], make: Callable[[dict, np.random.Generator], TaskSample],
          samples: int, seed: int) -> list[dict]:
    """Score ``samples`` prompts per unfinished cell; ``make`` builds one prompt for a cell."""
    out = []
    for cell in cells:
        if store.finished(cell):
            ev.tick()
            continue
        started = time.time()
        rng = cell_rng(seed, store.test, *cell.values())
        batch = [make(cell, rng) for _ in range(samples)]
        scored = ev.score(batch)
        out.append(_record(store, cell, scored, [fingerprint(b.prompt_ids, b.answer_ids) for b in batch], seed,
                           time.time() - started))
        ev.tick()
    return out


def run_passkey(ev, store, lengths, depths, samples, seed):
    cells = [{"length": n, "depth": d} for n in lengths for d in depths]
    return sweep(ev, store, cells, lambda c, rng: tasks.passkey(ev.tokenizer, ev.haystack, c["length"], c["depth"], rng,
                                                                     ev.prompt),
                 samples, seed)


def run_lines(ev, store, lengths, samples, seed):
    cells = [{"length": n} for n in lengths]
    return sweep(ev, store, cells, lambda c, rng: tasks.lines(ev.tokenizer, c["length"], rng, prompt=ev.prompt),
                 samples, seed)


def run_kv(ev, store, lengths, positions, samples, seed):
    cells = [{"length": n, "gold": g} for n in lengths for g in positions]
    return sweep(ev, store, cells, lambda c, rng: tasks.kv(ev.tokenizer, c["length"], c["gold"], rng, ev.prompt),
                 samples, seed)


def needle_prompts(ev: Evaluator, length: int, samples: int, rng: np.random.Generator) -> list[tasks.DepthSample]:
    """For one length, ``samples`` independent needle draws (each its own haystack, city and number,
    so that an accuracy over them is not one haystack's or one key's), to be placed at every depth."""
    return [tasks.needle_draw(ev.tokenizer, ev.haystack, length, rng, ev.prompt) for _ in range(samples)]


@torch.no_grad()
def run_needle(ev: Evaluator, store: RunStore, lengths, depths, samples, seed, reuse_prefix: bool = True):
    """The needle grid. Each sample has its own haystack, shared by every depth: with
    ``reuse_prefix`` the keys and values of the haystack before its deepest needle are computed
    once and cropped for each shallower depth, so each depth only runs what follows its needle
    (not for a model whose cache cannot be cropped: sliding-window layers drop the prefix)."""
    reuse_prefix = reuse_prefix and can_crop(new_cache(ev.model))
    out = []
    for length in lengths:
        cells = [{"length": length, "depth": d} for d in depths]
        todo = [c for c in cells if not store.finished(c)]
        ev.tick(len(cells) - len(todo))
        if not todo:
            continue
        draws = needle_prompts(ev, length, samples, cell_rng(seed, "needle", length))
        results: dict[str, list] = {str(c["depth"]): [None] * samples for c in todo}
        timings = {str(c["depth"]): 0.0 for c in todo}
        if reuse_prefix:
            for i, draw in enumerate(draws):
                _needle_reuse(ev, draw, i, todo, results, timings)
        else:
            for cell in todo:
                started = time.time()
                results[str(cell["depth"])] = ev.score([d.at(cell["depth"]) for d in draws])
                timings[str(cell["depth"])] += time.time() - started
        for cell in todo:
            key = str(cell["depth"])
            prints = [fingerprint(d.at(cell["depth"]).prompt_ids, d.answer_ids) for d in draws]
            out.append(_record(store, cell, results[key], prints, seed, timings[key]))
            ev.tick()
    return out


def _needle_reuse(ev, draw: tasks.DepthSample, index: int, cells, results, timings) -> None:
    """Score one sample at every depth of ``cells`` over one cache of its haystack's prefix."""
    order = sorted(cells, key=lambda c: -draw.cut(c["depth"]))  # deepest cut first: crop, never copy
    started = time.time()
    deepest = draw.prefix(order[0]["depth"])
    cache = new_cache(ev.model)
    if deepest:
        prefill(ev.model, torch.tensor([deepest], device=next(ev.model.parameters()).device), cache)
    share = (time.time() - started) / len(order)
    for cell in order:
        started = time.time()
        cut = draw.cut(cell["depth"])
        prefix = draw.prefix(cell["depth"])
        crop_to(cache, len(prefix))
        rest = draw.needle + draw.context[cut:] + draw.question
        results[str(cell["depth"])][index] = _score_continuation(ev, cache, prefix, rest, draw)
        timings[str(cell["depth"])] += share + time.time() - started


def _score_continuation(ev, cache, prefix: list[int], rest: list[int], draw: tasks.DepthSample) -> Scored:
    """Score the prompt ``prefix + rest``, whose ``prefix`` is in ``cache``; the cache is left at the prefix."""
    device = next(ev.model.parameters()).device
    if ev.scoring == "forced":
        return forced_scores(ev.model, [TaskSample(draw.task, rest, draw.answer, draw.answer_ids)], ev.pad,
                             cache=cache)[0]
    full = torch.tensor([prefix + rest], device=device)
    [(hits, logprob)], [text] = generate_scored(ev.model, ev.tokenizer, full, [draw.answer_ids], cache, ev.pad)
    return Scored(tasks.score_text("needle", draw.answer, text), logprob, len(hits), hits)
