"""Perplexity vs length on any text: documents truncated to each length, or a sliding window
with a stride. Only scored tokens count (context tokens of a sliding window are not scored)."""

from __future__ import annotations

import math
import time

import torch

from ropestretch.errors import UsageError
from ropestretch.eval.prefill import row_nll, sequence_nll
from ropestretch.eval.scoring import fingerprint


def token_stream(tokenizer, documents: list[str]) -> list[int]:
    """Documents tokenized and joined with EOS."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    return [t for doc in ids for t in doc + ([eos] if eos is not None else [])]


def nll_sum(model, ids: torch.Tensor, scored_from: int = 0) -> tuple[float, int]:
    """Summed negative log-likelihood of tokens ``scored_from+1 ..`` of each row, and their count
    (chunked prefill, logits only at scored positions: :func:`ropestretch.eval.prefill.sequence_nll`)."""
    return sequence_nll(model, ids, scored_from)


def run_ppl(ev, store, stream: list[int], lengths, samples: int, seed: int, mode: str = "truncate",
            stride: int | None = None):
    """Per length: ``truncate`` scores ``samples`` windows of that length drawn from the stream
    (each window's per-token NLL kept as ``windows``, for an interval over windows, and its
    fingerprint as ``prints``, so that two runs pair only over the same windows);
    ``sliding`` scores a span of ``samples * length`` tokens with windows of that length moved by
    ``stride`` (default length / 2), each token scored once with as much context as the window gives."""
    from ropestretch.eval.retrieval import cell_rng

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
                rows, per_row = row_nll(ev.model, torch.tensor(batch))
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
                ids = torch.tensor([text[start:end]])
                t, c = nll_sum(ev.model, ids, scored_from=max(0, scored_to - start - 1) if start else 0)
                total, count, scored_to = total + t, count + c, end
                if end == span:
                    break
        nll = total / count
        out.append(store.add(cell, nll=nll, ppl=math.exp(nll), tokens=count, mode=mode,
                             seconds=round(time.time() - started, 3), **extra))
        ev.tick()
    return out
