"""Retrieval sweeps: passkey and needle (length x depth), LongChat-Lines (length), key-value
retrieval (length x gold position). Every cell draws its samples from (seed, cell), so a cell's
result does not depend on which other cells run, and a rerun skips finished cells."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ropestretch.data import tasks
from ropestretch.data.tasks import TaskSample
from ropestretch.eval.scoring import forced_correct, generated_correct
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

    @property
    def pad(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)

    def score(self, samples: Sequence[TaskSample]) -> list[bool]:
        """Correctness per sample, batching prompts of equal length together."""
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            by_length.setdefault(len(s.prompt_ids), []).append(i)
        correct = [False] * len(samples)
        for indices in by_length.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = [samples[i] for i in chunk]
                if self.scoring == "forced":
                    result = forced_correct(self.model, batch, self.pad)
                else:
                    result, _ = generated_correct(self.model, self.tokenizer, batch, pad=self.pad)
                for i, ok in zip(chunk, result):
                    correct[i] = ok
        return correct

    def tick(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.update(n)


def cell_rng(seed: int, test: str, *cell: float) -> np.random.Generator:
    """A generator for one cell, independent of every other cell."""
    return np.random.default_rng([seed, zlib.crc32(test.encode()), *[int(round(c * 1000)) for c in cell]])


def _record(store: RunStore, cell: dict, correct: list[bool], started: float) -> dict:
    return store.add(cell, accuracy=float(np.mean(correct)), correct=int(sum(correct)), n=len(correct),
                     seconds=round(time.time() - started, 3))


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
        out.append(_record(store, cell, ev.score(batch), started))
        ev.tick()
    return out


def run_passkey(ev, store, lengths, depths, samples, seed):
    cells = [{"length": n, "depth": d} for n in lengths for d in depths]
    return sweep(ev, store, cells, lambda c, rng: tasks.passkey(ev.tokenizer, ev.haystack, c["length"], c["depth"], rng),
                 samples, seed)


def run_lines(ev, store, lengths, samples, seed):
    cells = [{"length": n} for n in lengths]
    return sweep(ev, store, cells, lambda c, rng: tasks.lines(ev.tokenizer, c["length"], rng), samples, seed)


def run_kv(ev, store, lengths, positions, samples, seed):
    cells = [{"length": n, "gold": g} for n in lengths for g in positions]
    return sweep(ev, store, cells, lambda c, rng: tasks.kv(ev.tokenizer, c["length"], c["gold"], rng), samples, seed)


@dataclass
class NeedleDraw:
    """One needle sample at one length: its own haystack, keyed city and 7-digit number; the
    sweep inserts the needle into the same haystack at every depth."""

    context: list[int]
    bounds: list[int]  # sentence boundaries in ``context``, where the needle may go
    needle: list[int]
    question: list[int]
    answer: list[int]
    number: str

    def cut(self, depth: float) -> int:
        room = len(self.context)
        return min(self.bounds, key=lambda b: abs(b - depth / 100 * room))

    def prompt(self, depth: float) -> list[int]:
        cut = self.cut(depth)
        return self.context[:cut] + self.needle + self.context[cut:] + self.question


def needle_prompts(ev: Evaluator, length: int, samples: int, rng: np.random.Generator) -> list[NeedleDraw]:
    """For one length, ``samples`` independent draws, so that an accuracy over them is not one
    haystack's or one key's."""
    tok = ev.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    draws = []
    for _ in range(samples):
        city = tasks.CITIES[int(rng.integers(len(tasks.CITIES)))]
        number = str(int(rng.integers(10**6, 10**7)))
        needle, question = ids(tasks.NEEDLE.format(city=city, number=number)), ids(tasks.NEEDLE_QUESTION.format(city=city))
        room = length - len(needle) - len(question)
        if room < 1:
            from ropestretch.errors import UsageError

            raise UsageError(f"length {length} is too short for the needle and its question")
        context, bounds = ev.haystack.fill(room, rng)
        draws.append(NeedleDraw(context, bounds, needle, question, ids(" " + number), number))
    return draws


@torch.no_grad()
def run_needle(ev: Evaluator, store: RunStore, lengths, depths, samples, seed, reuse_prefix: bool = True):
    """The needle grid. Each sample has its own haystack, shared by every depth: with
    ``reuse_prefix`` the keys and values of the haystack before its deepest needle are computed
    once and cropped for each shallower depth, so each depth only runs what follows its needle."""
    out = []
    for length in lengths:
        cells = [{"length": length, "depth": d} for d in depths]
        todo = [c for c in cells if not store.finished(c)]
        ev.tick(len(cells) - len(todo))
        if not todo:
            continue
        draws = needle_prompts(ev, length, samples, cell_rng(seed, "needle", length))
        results = {str(c["depth"]): [False] * samples for c in todo}
        timings = {str(c["depth"]): 0.0 for c in todo}
        if reuse_prefix:
            for i, draw in enumerate(draws):
                _needle_reuse(ev, draw, i, todo, results, timings)
        else:
            for cell in todo:
                started = time.time()
                prompts = [TaskSample("needle", d.prompt(cell["depth"]), d.number, d.answer) for d in draws]
                results[str(cell["depth"])] = ev.score(prompts)
                timings[str(cell["depth"])] += time.time() - started
        for cell in todo:
            key = str(cell["depth"])
            record = store.add(cell, accuracy=float(np.mean(results[key])), correct=int(sum(results[key])),
                               n=samples, seconds=round(timings[key], 3))
            out.append(record)
            ev.tick()
    return out


def _needle_reuse(ev, draw: NeedleDraw, index: int, cells, results, timings) -> None:
    """Score one sample at every depth of ``cells`` over one cache of its haystack's prefix."""
    from transformers import DynamicCache

    order = sorted(cells, key=lambda c: -draw.cut(c["depth"]))  # deepest cut first: crop, never copy
    started = time.time()
    deepest = draw.cut(order[0]["depth"])
    cache = DynamicCache(config=ev.model.config)
    if deepest > 0:
        ev.model(input_ids=torch.tensor([draw.context[:deepest]]), past_key_values=cache, use_cache=True)
    share = (time.time() - started) / len(order)
    for cell in order:
        started = time.time()
        cut = draw.cut(cell["depth"])
        crop_to(cache, cut)
        rest = draw.needle + draw.context[cut:] + draw.question
        ok = _score_continuation(ev, cache, draw.context[:cut], [rest], [draw.answer], [draw.number])
        results[str(cell["depth"])][index] = ok[0]
        timings[str(cell["depth"])] += share + time.time() - started


def crop_to(cache, length: int) -> None:
    """Shorten a transformers cache to ``length`` tokens (transformers 5 takes a negative count to
    remove; 4.x took the length to keep)."""
    import inspect

    extra = cache.get_seq_length() - length
    if extra <= 0:
        return
    if "tokens_to_remove" in inspect.signature(cache.crop).parameters:
        cache.crop(-extra)
    else:
        cache.crop(length)


def _score_continuation(ev, cache, prefix, rows, answers, answer_texts):
    """Score prompts that continue a cached ``prefix`` (all rows of equal length)."""
    if ev.scoring == "forced":
        cut = len(prefix)
        ids = torch.tensor([r + a for r, a in zip(rows, answers)])
        logits = ev.model(input_ids=ids, past_key_values=cache, use_cache=True).logits
        crop_to(cache, cut)
        start = len(rows[0])
        pred = logits[:, start - 1: start - 1 + len(answers[0])].argmax(-1)
        return [bool(torch.equal(p, torch.tensor(a))) for p, a in zip(pred, answers)]
    cut = len(prefix)
    full = torch.tensor([prefix + r for r in rows])
    out = ev.model.generate(input_ids=full, attention_mask=torch.ones_like(full), past_key_values=cache,
                            max_new_tokens=len(answers[0]) + 4, do_sample=False, pad_token_id=ev.pad,
                            eos_token_id=ev.tokenizer.eos_token_id)
    crop_to(cache, cut)
    texts = ev.tokenizer.batch_decode(out[:, full.shape[1]:], skip_special_tokens=True)
    return [tasks.score_text("needle", a, t) for a, t in zip(answer_texts, texts)]
