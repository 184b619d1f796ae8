"""Perplexity vs length on any text: documents truncated to each length, or a sliding window
with a stride. Only scored tokens count (context tokens of a sliding window are not scored)."""

from __future__ import annotations

import math
import time

from ropestretch.errors import UsageError
from ropestretch.eval.retrieval import cell_rng
from ropestretch.eval.scoring import fingerprint


def run_ppl(ev, store, stream: list[int], lengths, samples: int, seed: int, mode: str = "truncate",
            stride: int | None = None):
    """Per length: ``truncate`` scores ``samples`` windows of that length drawn from the stream
    (each window's per-token NLL kept as ``windows``, for an interval over windows, and its
    fingerprint as ``prints``, so that two runs pair only over the same windows);
    ``sliding`` scores a span of ``samples * length`` tokens with windows of that length moved by
    ``stride`` (default length / 2), each token scored once with as much context as the window gives."""
    out = []
    for length in lengths:
        cell = {"length": length}
        if store.finished(cell):
            ev.tick()
            continue
        started, extra = time.time(), {}
        rng = cell_rng(seed, "ppl", length)
        if mode == "truncate":
            if len(stream) < length + 1:
                raise UsageError(f"the text has {len(stream)} tokens, fewer than one window of {length}")
            starts = rng.integers(0, len(stream) - length, samples)
            total, count, windows, prints = 0.0, 0, [], []
            for i in range(0, samples, ev.batch_size):
                batch = [stream[s:s + length] for s in starts[i:i + ev.batch_size]]
                rows, per_row = ev.backend.nll(batch)
                total, count = total + sum(rows), count + per_row * len(rows)
                windows += [round(t / per_row, 6) for t in rows]
                prints += [fingerprint(w, ()) for w in batch]
            extra.update(windows=windows, prints=prints)
        else:
            step = stride or max(1, length // 2)
            span = min(len(stream), samples * length)
            if span < length + 1:
                raise UsageError(f"the text has {len(stream)} tokens, fewer than one window of {length}")
            begin = int(rng.integers(0, len(stream) - span + 1))
            text = stream[begin:begin + span]
            total, count, scored_to = 0.0, 0, 0
            for start in range(0, span - 1, step):
                end = min(span, start + length)
                [t], c = ev.backend.nll([text[start:end]], scored_from=max(0, scored_to - start - 1) if start else 0)
                total, count, scored_to = total + t, count + c, end
                if end == span:
                    break
        nll = total / count
        out.append(store.add(cell, nll=nll, ppl=math.exp(nll), tokens=count, mode=mode,
                             seconds=round(time.time() - started, 3), **extra))
        ev.tick()
    return out
