"""Training-free extension at inference: attention methods that remap relative positions
(:data:`ATTENTION_METHODS`), registered through transformers' own attention hook.

Each method keeps a query-key pair's relative position ``i - j`` where it is small (the positions
the model was trained on most) and maps the large ones onto smaller ones it knows:

- ``self-extend`` (Jin et al. 2024, "LLM Maybe LongLM", arXiv 2401.01325): neighbour attention
  with normal positions inside a window ``w``; beyond it, grouped positions ``floor(p / G)``,
  the queries' shifted by ``w - floor(w / G)`` so that the two meet at ``w``:
  ``rel = i - j`` if ``i - j < w``, else ``floor(i / G) - floor(j / G) + w - floor(w / G)``.
  Its reach is ``(N - w) * G + w`` for a model whose RoPE covers ``N`` positions (``G`` dividing
  ``w``; ``G * (N - w + floor(w / G))`` in general).
- ``string`` (An et al. 2024, "Why Does the Effective Context Length of LLMs Fall Short?",
  arXiv 2410.18745): the well-trained small positions shifted over the rarely trained large ones,
  ``rel = i - j`` if ``i - j < S``, else ``i - j - S + W`` (shift ``S``, default ``N / 3``; local
  window ``W``, default 128). Its reach is ``N + S - W``.

How: the model's attention has already rotated ``q`` and ``k`` at their own positions, with
whatever RoPE the checkpoint carries (any ``--scaling`` composes: the methods remap positions, the
checkpoint's frequencies and attention factor rotate them). A pair in the far branch is the same
pair rotated by an extra angle: the query by ``delta_q(i)`` and the key by ``delta_k(j)``, the
differences between its far-branch and original positions (RoPE's rotations compose). Attention
runs over query chunks, each branch only on the keys where some query of the chunk needs it (the far
branch on the keys up to ``max(i) - boundary``, the near one from ``min(i) - boundary + 1`` on). On
CPU each branch goes through PyTorch's fused attention kernel (the one behind SDPA), which returns
each query's log-sum-exp, and the two are merged as one softmax; elsewhere the chunk's scores are
computed, chosen by ``i - j`` and normalised together. Memory is a chunk's mask or scores against the
keys, never a ``T x T`` position or mask tensor. The decoding path is the same function with one query.

Where it differs from the authors' code (docs/methods.md): Self-Extend's prefill there shifts the
grouped queries by ``w - w / G`` (a float), its decoding by ``w - w // G``; here both use the
integer shift (the same when ``G`` divides ``w``, as the defaults do). STRING's prefill there counts
the key at ``i - j = S`` in both branches (its decoding does not); here it is in the far branch
only, as its decoding has it. STRING's code also scales the cos/sin caches by ``1 + 0.1 ln 2``,
which its formula does not state; that is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ropestretch.errors import UsageError
from ropestretch.eval.registry import Option, option_values, positive_int
from ropestretch.options import add_entry

CHUNK_FLOATS = 1 << 25  # score (or mask) entries per query chunk (128 MB in float32)
FUSED = True  # on CPU, each branch through PyTorch's fused attention kernel (False: the plain product path)


@dataclass(frozen=True)
class FarBranch:
    """Where a method's far branch starts (``i - j >= boundary``) and its extra rotations."""

    boundary: int
    delta_q: Callable[[Any], Any]  # query positions (a long tensor) -> extra angle multiples
    delta_k: Callable[[Any], Any] | None  # key positions -> extra angle multiples (None: none)


@dataclass(frozen=True)
class AttentionMethod:
    """One method: its name, paper, options (CLI flags and record keys), the far branch it builds for
    a model whose RoPE covers ``window`` positions, and the longest length it reaches there."""

    name: str
    help: str
    paper: str
    options: tuple[Option, ...]
    far: Callable[[int, dict[str, Any]], FarBranch]
    reach: Callable[[int, dict[str, Any]], int]
    resolve: Callable[[int, dict[str, Any]], dict[str, Any]]  # defaults that depend on the window, checks


ATTENTION_METHODS: dict[str, AttentionMethod] = {}


def register_attention(method: AttentionMethod) -> AttentionMethod:
    return add_entry(ATTENTION_METHODS, method, "attention method")


# --- Self-Extend ---------------------------------------------------------------------------------

def _self_extend_resolve(window: int, o: dict[str, Any]) -> dict[str, Any]:
    group, neighbor = int(o["group"]), int(o["neighbor"])
    if group < 1:
        raise UsageError(f"--group must be a positive integer, got {group}")
    if not 0 < neighbor < window:
        raise UsageError(f"--neighbor {neighbor} must lie between 1 and the model's window {window} - 1")
    return {"group": group, "neighbor": neighbor}


def _self_extend_far(window: int, o: dict[str, Any]) -> FarBranch:
    g, w = o["group"], o["neighbor"]
    return FarBranch(w, lambda q: q.div(g, rounding_mode="floor") + (w - w // g) - q,
                     lambda k: k.div(g, rounding_mode="floor") - k)


register_attention(AttentionMethod(
    "self-extend", "Self-Extend: normal positions within the neighbour window, grouped ones beyond",
    "Jin et al. 2024, arXiv 2401.01325",
    (Option("group", 4, "Self-Extend: group size G (positions beyond the window count floor(p / G))", positive_int,
            "G"),
     Option("neighbor", 1024, "Self-Extend: neighbour window w (normal positions within it)", positive_int, "W")),
    # the far branch's largest position, floor((L - 1) / G) + w - floor(w / G), stays below N
    _self_extend_far, lambda n, o: o["group"] * (n - o["neighbor"] + o["neighbor"] // o["group"]),
    _self_extend_resolve))


# --- STRING --------------------------------------------------------------------------------------

def _string_resolve(window: int, o: dict[str, Any]) -> dict[str, Any]:
    shift = int(o["shift"]) if o.get("shift") is not None else window // 3
    local = int(o["local"])
    if not 0 < local < shift < window:
        raise UsageError(f"STRING needs 0 < --local ({local}) < --shift ({shift}) < the model's window ({window})")
    return {"shift": shift, "local": local}


register_attention(AttentionMethod(
    "string", "STRING: the well-trained small positions shifted over the rarely trained large ones",
    "An et al. 2024, arXiv 2410.18745",
    (Option("shift", None, "STRING: shift S (default: a third of the model's window)", positive_int, "S"),
     Option("local", 128, "STRING: local window W kept after the shift", positive_int, "W")),
    lambda n, o: FarBranch(o["shift"], lambda q: q.new_full(q.shape, o["local"] - o["shift"]), None),
    lambda n, o: n + o["shift"] - o["local"], _string_resolve))


# --- the attention function ----------------------------------------------------------------------

def _rotate(x, delta, inv_freq):
    """``x`` (..., n, D) rotated by ``delta`` (n,) positions at ``inv_freq`` on its first
    ``2 * len(inv_freq)`` dimensions (rotate-half pairing, as the families this runs on use)."""
    import torch

    half = inv_freq.shape[0]
    angles = delta.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    rot, rest = x[..., :2 * half], x[..., 2 * half:]
    turned = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    return torch.cat([rot * cos + turned * sin, rest], -1)


def _flash_for_cpu():
    """PyTorch's fused CPU attention that also returns each query's log-sum-exp (the kernel behind
    ``scaled_dot_product_attention`` on CPU), or None where this PyTorch has none."""
    import torch

    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _additive(allowed, dtype):
    """A boolean mask as the additive one the fused kernel takes (0 where allowed, -inf elsewhere)."""
    import torch

    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def _merge(parts):
    """One softmax over several key sets from each set's output and log-sum-exp: ``sum_b exp(lse_b - m)
    out_b / sum_b exp(lse_b - m)``."""
    import torch

    top = torch.stack([lse for _, lse in parts]).amax(0)
    weights = [torch.exp(lse - top) for _, lse in parts]
    total = sum(weights)
    return sum(out.float() * (w / total)[..., None] for (out, _), w in zip(parts, weights))


def remapped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An ``AttentionInterface`` function: causal attention with the module's method's relative
    positions (the module carries ``ropestretch_far`` and ``ropestretch_inv_freq``: :func:`enable`)."""
    import torch

    far: FarBranch = module.ropestretch_far
    inv_freq = module.ropestretch_inv_freq.to(query.device)
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    if key.shape[1] != heads:  # grouped-query attention: each key head serves several query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    positions = kwargs.get("position_ids")
    q_pos = positions[0].to(query.device) if positions is not None else torch.arange(kv_len - q_len, kv_len,
                                                                                      device=query.device)
    k_pos = torch.arange(kv_len, device=query.device)
    scaling = dim ** -0.5 if scaling is None else scaling
    key_far = key if far.delta_k is None else _rotate(key, far.delta_k(k_pos), inv_freq)
    query_far = _rotate(query, far.delta_q(q_pos), inv_freq)
    padding = attention_mask if attention_mask is not None and attention_mask.dtype == torch.bool else None
    flash = _flash_for_cpu() if query.device.type == "cpu" and FUSED else None
    chunk = max(1, CHUNK_FLOATS // max(1, batch * heads * kv_len))
    out = torch.empty_like(query)
    for start in range(0, q_len, chunk):
        end = min(q_len, start + chunk)
        distance = q_pos[start:end, None] - k_pos[None, :]
        # keys before `lo` are in the far branch for every query of the chunk, keys from `hi` on in the
        # near one (or in the future): each branch is scored only where some query needs it
        lo = min(kv_len, max(0, int(q_pos[start:end].min()) - far.boundary + 1))
        hi = min(kv_len, max(0, int(q_pos[start:end].max()) - far.boundary + 1))
        q, q_far = query[:, :, start:end], query_far[:, :, start:end]
        allowed = distance >= 0
        if padding is not None:
            allowed = allowed & padding[:, :, start:end, :kv_len]
        if flash is not None:  # each branch through the fused kernel, merged by the two log-sum-exps
            near_ok = allowed[..., lo:] & (distance[:, lo:] < far.boundary)  # only the keys each branch reads
            parts = [flash(q, key[:, :, lo:], value[:, :, lo:], attn_mask=_additive(near_ok, query.dtype).expand(
                batch, 1, end - start, kv_len - lo), scale=scaling)]
            if hi > 0:
                far_ok = allowed[..., :hi] & (distance[:, :hi] >= far.boundary)
                part, lse = flash(q_far, key_far[:, :, :hi], value[:, :, :hi], attn_mask=_additive(
                    far_ok, query.dtype).expand(batch, 1, end - start, hi), scale=scaling)
                # a query with no key in the branch gets output 0 and log-sum-exp 0 from the kernel: weight 0
                parts.append((part, lse.masked_fill(~far_ok.expand(batch, 1, end - start, hi).any(-1), float("-inf"))))
            out[:, :, start:end] = _merge(parts).to(query.dtype)
            continue
        scores = torch.empty(batch, heads, end - start, kv_len, dtype=query.dtype, device=query.device)
        scores[..., :lo] = torch.matmul(q_far, key_far[:, :, :lo].transpose(-1, -2))
        scores[..., hi:] = torch.matmul(q, key[:, :, hi:].transpose(-1, -2))
        if hi > lo:
            scores[..., lo:hi] = torch.where(distance[:, lo:hi] < far.boundary,
                                             torch.matmul(q, key[:, :, lo:hi].transpose(-1, -2)),
                                             torch.matmul(q_far, key_far[:, :, lo:hi].transpose(-1, -2)))
        scores = (scores.float() * scaling).masked_fill(~allowed, float("-inf"))
        out[:, :, start:end] = torch.matmul(torch.softmax(scores, -1).to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


FUNCTION_NAME = "ropestretch_remapped"


def check_model(model) -> tuple[Any, int]:
    """The model's inverse frequencies and the positions its RoPE covers, or one line saying why the
    methods cannot run on it."""
    from ropestretch.eval.prefill import length_dependent_rope

    from ropestretch.rope.families import rotates_half

    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(text, "model_type", "?")
    if not rotates_half(kind):
        raise UsageError(f"--attention runs on families whose every layer rotates q and k with rotate-half pairing "
                         f"(Llama, Mistral, Qwen, Phi, ...); {kind} pairs its dimensions otherwise, interleaved "
                         "or through MLA, or skips RoPE in some layers")
    if getattr(text, "sliding_window", None) or "sliding_attention" in (getattr(text, "layer_types", None) or []):
        raise UsageError(f"--attention runs on full causal attention; {kind} has sliding-window layers")
    if length_dependent_rope(text):
        raise UsageError("--attention needs one set of RoPE frequencies; this checkpoint's change with the length "
                         "(dynamic, or longrope with two factor sets)")
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise UsageError(f"--attention needs the model's rotary embedding; {kind} has none where transformers keeps it")
    if not _attention_modules(model):
        raise UsageError(f"--attention runs through transformers' attention interface; {kind}'s attention does not")
    return rotary.inv_freq.detach().clone(), int(text.max_position_embeddings)


def _attention_modules(model) -> list:
    """The model's attention layers that call transformers' attention interface (ALL_ATTENTION_FUNCTIONS)."""
    import inspect

    found, seen = [], {}
    for module in model.modules():
        cls = type(module)
        if not (cls.__name__.endswith("Attention") and hasattr(module, "layer_idx")):
            continue
        if cls not in seen:
            try:
                seen[cls] = "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(cls.forward)
            except (OSError, TypeError):
                seen[cls] = False
        if not seen[cls]:
            return []
        found.append(module)
    return found


def resolve(method: str, window: int, length: int, **options) -> dict[str, Any]:
    """``method``'s options as resolved for a model whose RoPE covers ``window`` positions, checked
    against the longest prompt ``length`` (its reach), as the run record keeps them."""
    if method not in ATTENTION_METHODS:
        raise UsageError(f"unknown attention method {method!r} (one of {', '.join(ATTENTION_METHODS)})")
    spec = ATTENTION_METHODS[method]
    values = spec.resolve(window, option_values(spec.options, options, f"--attention {method}"))
    reach = spec.reach(window, values)
    if length > reach:
        shown = ", ".join(f"{k} {v}" for k, v in values.items())
        raise UsageError(f"--attention {method} ({shown}) reaches {reach} tokens on this model (RoPE over {window} "
                         f"positions); {length} is past it")
    return {"method": method, **values}


def config_window(config: dict[str, Any]) -> int:
    """The positions a checkpoint's RoPE covers, from its config.json (its text part)."""
    from ropestretch.rope.config import text_section

    window = text_section(config).get("max_position_embeddings")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise UsageError("--attention needs the model's max_position_embeddings (a positive integer)")
    return window


def enable(model, method: str, length: int, **options) -> dict[str, Any]:
    """Make ``model`` attend with ``method`` (registered as a transformers attention function) for
    prompts up to ``length`` tokens; returns the method's options as resolved (for the run record).
    A model or length it cannot serve is one line."""
    from transformers import AttentionInterface

    if method not in ATTENTION_METHODS:
        raise UsageError(f"unknown attention method {method!r} (one of {', '.join(ATTENTION_METHODS)})")
    inv_freq, window = check_model(model)
    record = resolve(method, window, length, **options)
    values = {k: v for k, v in record.items() if k != "method"}
    far = ATTENTION_METHODS[method].far(window, values)
    AttentionInterface.register(FUNCTION_NAME, remapped_attention)
    for module in _attention_modules(model):
        module.ropestretch_far, module.ropestretch_inv_freq = far, inv_freq
    model.set_attn_implementation(FUNCTION_NAME)
    return record


EXPORT_HELP = ("an attention method is not a checkpoint property: only `none`; self-extend and string run at "
               "evaluation (ropestretch eval --attention)")


def refuse_export(method: str | None) -> None:
    """``apply`` and ``gguf`` write what engines run; no engine runs these methods: one line saying so."""
    if method in (None, "none"):
        return
    raise UsageError(f"--attention {method} cannot be exported: no engine runs it (vLLM and transformers have no such "
                     "attention; llama.cpp's CLI had grouped attention, --grp-attn-n/--grp-attn-w, removed from its "
                     "server); evaluate it with ropestretch eval --attention " + method)
