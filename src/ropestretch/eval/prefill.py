"""Long prompts within memory: prefill through the KV cache in chunks, and project to the
vocabulary only at the positions that are scored.

A whole-sequence forward of ``T`` tokens holds ``T x vocab`` logits (6.4 GB in float32 for SmolLM2
at 32K) and every layer's activations for all ``T``; here memory is the weights, the KV cache and a
working set bounded by the chunk (``benchmarks/prefill_memory.py`` measures it). The model's own
forward computes the kept logits (``logits_to_keep``), so a family's final logit scaling or
soft-capping still applies.

A RoPE whose frequencies depend on the sequence length (``dynamic``; ``longrope`` with different
short and long factors) would rotate each chunk differently, so such models prefill in one call.
"""

from __future__ import annotations

import inspect

import torch

DEFAULT_CHUNK = 2048
LOGIT_BUDGET = 1 << 26  # floats of logits held at once (256 MB in float32)


def length_dependent_rope(config) -> bool:
    """True when the model's RoPE changes with the sequence length, so that chunks would disagree."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    layers = [p for p in params.values() if isinstance(p, dict)] if params and all(
        isinstance(v, (dict, type(None))) for v in params.values()) else [params]
    for p in layers:
        kind = p.get("rope_type", p.get("type", "default"))
        if "dynamic" in kind:
            return True
        if kind == "longrope" and list(p.get("short_factor") or []) != list(p.get("long_factor") or []):
            return True
    return False


def chunk_size(model, chunk: int | None = None) -> int | None:
    """Tokens per prefill call: ``chunk`` (default :data:`DEFAULT_CHUNK`), or None (all at once)
    for a length-dependent RoPE."""
    return None if length_dependent_rope(model.config) else (chunk or DEFAULT_CHUNK)


def cache_kwargs(model, cache) -> dict:
    """``cache=`` where the model's forward takes it (transformers 5.x), else ``past_key_values=``."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _keep_kwarg(model) -> str | None:
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


def forward_keep(model, ids: torch.Tensor, cache, keep: int):
    """The model on ``ids`` after what ``cache`` holds, with logits for the last ``keep`` positions
    only (``keep >= 1``). Returns logits ``(batch, keep, vocab)``."""
    name = _keep_kwarg(model)
    kwargs = {name: keep} if name else {}
    out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache), **kwargs)
    return out.logits[:, -keep:]


@torch.no_grad()
def prefill(model, ids: torch.Tensor, cache, chunk: int | None = None) -> None:
    """Run ``ids`` ``(batch, T)`` into ``cache``, chunk by chunk (see :func:`chunk_size`)."""
    size = chunk_size(model, chunk) or max(1, ids.shape[1])
    for start in range(0, ids.shape[1], size):
        forward_keep(model, ids[:, start:start + size], cache, 1)


def new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def can_crop(cache) -> bool:
    """Whether ``cache`` can be cut back to a shorter prefix: not where it has sliding-window layers
    (Gemma 2/3, Mistral's window), which drop what falls out of their window."""
    return not any("Sliding" in type(layer).__name__ for layer in getattr(cache, "layers", []))


def crop_to(cache, length: int) -> None:
    """Shorten a transformers cache to ``length`` tokens (transformers 5 takes a negative count to
    remove; 4.x took the length to keep)."""
    extra = cache.get_seq_length() - length
    if extra <= 0:
        return
    if "tokens_to_remove" in inspect.signature(cache.crop).parameters:
        cache.crop(-extra)
    else:
        cache.crop(length)


@torch.no_grad()
def answer_logits(model, prompt: torch.Tensor, answer: torch.Tensor, cache=None, chunk: int | None = None):
    """Teacher-forced logits over ``answer`` ``(batch, A)`` after ``prompt`` ``(batch, P)``, the prompt
    prefilled into ``cache`` (a new one by default; it is left holding the prompt and answer).
    Returns ``(batch, A, vocab)``: position ``j`` predicts ``answer[:, j]``."""
    cache = new_cache(model) if cache is None else cache
    if prompt.shape[1] > 1:
        prefill(model, prompt[:, :-1], cache, chunk)
    tail = torch.cat([prompt[:, -1:], answer[:, :-1]], dim=1)
    return forward_keep(model, tail, cache, answer.shape[1])


@torch.no_grad()
def row_nll(model, ids: torch.Tensor, scored_from: int = 0, chunk: int | None = None) -> tuple[list[float], int]:
    """Per row of ``ids``: the summed negative log-likelihood of tokens ``scored_from + 1 ..``, and
    how many tokens each row scores, prefilled chunk by chunk with logits only where tokens are scored."""
    ids = ids.to(next(model.parameters()).device)
    cache = new_cache(model)
    batch, total = ids.shape
    vocab = model.get_output_embeddings().weight.shape[0]
    size = chunk_size(model, chunk)
    # the logits of one call stay bounded; a length-dependent RoPE needs the whole sequence in one call
    size = total if size is None else max(1, min(size, LOGIT_BUDGET // max(1, vocab * batch)))
    nll, count = torch.zeros(batch, dtype=torch.float64), 0
    for start in range(0, total - 1, size):
        end = min(total - 1, start + size)  # positions start..end-1 predict tokens start+1..end
        scored = max(0, end - max(start, scored_from))
        logits = forward_keep(model, ids[:, start:end], cache, max(1, scored))
        if scored:
            target = ids[:, end - scored + 1:end + 1]
            losses = torch.nn.functional.cross_entropy(logits[:, -scored:].float().reshape(-1, logits.shape[-1]),
                                                       target.reshape(-1), reduction="none")
            nll += losses.view(batch, scored).double().sum(1).cpu()
            count += scored
    return nll.tolist(), count


def sequence_nll(model, ids: torch.Tensor, scored_from: int = 0, chunk: int | None = None) -> tuple[float, int]:
    """Summed negative log-likelihood of tokens ``scored_from + 1 ..`` of every row of ``ids``, and
    their count (:func:`row_nll` over all rows)."""
    rows, per_row = row_nll(model, ids, scored_from, chunk)
    return sum(rows), per_row * len(rows)
