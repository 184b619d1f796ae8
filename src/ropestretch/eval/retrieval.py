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

from ropestretch.data import tasks
from ropestretch.data.tasks import TaskSample
from ropestretch.eval.scoring import Scored, fingerprint


@dataclass
class Evaluator:
    """What a sweep runs on: a model (a transformers model, or any
    :class:`~ropestretch.eval.backends.Backend`) with its tokenizer, how to score (``forced``: one
    pass; ``generate``: greedy, string match), the batch size, the haystack, the prompt format
    (None: the legacy wording), the perplexity text (``documents``, default the built-in prose, or
    ``tokens`` already tokenized) and a progress bar."""

    model: Any
    tokenizer: Any = None
    scoring: str = "forced"
    batch_size: int = 8
    haystack: Any = None
    progress: Any = None  # a tqdm bar or None
    prompt: Any = None  # a PromptFormat; None is the legacy wording
    documents: Any = None  # the perplexity text, as documents
    tokens: Any = None  # or already as one token stream (several evaluators over one tokenizer share it)

    def __post_init__(self):
        from ropestretch.eval.backends import Backend, TransformersBackend

        if isinstance(self.model, Backend):
            self.backend = self.model
            self.tokenizer = self.tokenizer or self.backend.tokenizer
        else:
            self.backend = TransformersBackend(self.model, self.tokenizer)

    @property
    def pad(self) -> int:
        return self.backend.pad()

    def score(self, samples: Sequence[TaskSample]) -> list[Scored]:
        """Each sample's result and answer log-likelihood (prompts of equal length batched together)."""
        return self.backend.score(samples, self.scoring, self.batch_size)

    def stream(self) -> list[int]:
        """The perplexity text as one token stream (documents joined with EOS), tokenized once."""
        from ropestretch.data.corpus import builtin_documents, token_stream

        if self.tokens is None:
            self.tokens = token_stream(self.tokenizer, self.documents or builtin_documents())
        return self.tokens

    @property
    def essay(self) -> list[str]:
        """RULER's essay haystack: the text's words in order (:func:`ropestretch.data.ruler.essay_words`)."""
        if getattr(self, "_essay", None) is None:
            from ropestretch.data.ruler import essay_words

            self._essay = essay_words(self.documents)
        return self._essay

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
            | ({} if s.score is None else {"score": round(s.score, 5)})
            for i, (s, p) in enumerate(zip(scored, prints))]


def _record(store, cell: dict, scored: Sequence[Scored], prints: Sequence[str], seed: int,
            seconds: float) -> dict:
    correct = [s.correct for s in scored]
    shares = [s.score for s in scored if s.score is not None]
    extra = {"score": round(float(np.mean(shares)), 5)} if len(shares) == len(scored) else {}
    return store.add(cell, accuracy=float(np.mean(correct)), correct=int(sum(correct)), n=len(correct), **extra,
                     seconds=round(seconds, 3), seed=seed, samples=sample_rows(scored, prints))


def sweep(ev: Evaluator, store, cells: list[dict], make: Callable[[dict, np.random.Generator], TaskSample],
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


def run_ruler(ev: Evaluator, store, name: str, lengths, samples, seed):
    """A RULER task by length: ``samples`` prompts per length, each filled to the cell's length."""
    from ropestretch.data import ruler

    return sweep(ev, store, [{"length": n} for n in lengths],
                 lambda c, rng: ruler.sample(name, ev.tokenizer, c["length"], rng, ev.prompt, ev.essay), samples, seed)


def needle_prompts(ev: Evaluator, length: int, samples: int, rng: np.random.Generator) -> list[tasks.DepthSample]:
    """For one length, ``samples`` independent needle draws (each its own haystack, city and number,
    so that an accuracy over them is not one haystack's or one key's), to be placed at every depth."""
    return [tasks.needle_draw(ev.tokenizer, ev.haystack, length, rng, ev.prompt) for _ in range(samples)]


def run_needle(ev: Evaluator, store, lengths, depths, samples, seed, reuse_prefix: bool = True):
    """The needle grid. Each sample has its own haystack, shared by every depth: a backend that can
    (transformers, where the cache crops) computes the haystack before its deepest needle once and
    crops it for each shallower depth, so each depth only runs what follows its needle; the others
    score each placement (vLLM's prefix caching reuses the prefix by itself)."""
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
        if reuse_prefix and ev.backend.reuses_prefix:
            for i, draw in enumerate(draws):
                for depth, (scored, seconds) in ev.backend.score_draw(draw, [c["depth"] for c in todo],
                                                                      ev.scoring).items():
                    results[str(depth)][i] = scored
                    timings[str(depth)] += seconds
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
