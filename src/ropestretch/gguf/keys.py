"""A RoPE in llama.cpp's terms: the one mapping from a scaled RoPE or a checkpoint's to GGUF keys.

llama.cpp reads a model's RoPE from GGUF metadata and one optional tensor (``gguf`` package's
names): ``{arch}.rope.freq_base``; ``{arch}.rope.scaling.type`` (``none``, ``linear``, ``yarn``)
with ``.factor`` and ``.original_context_length`` (for yarn it computes the ``1 + 0.1 ln s``
attention scale itself, and for this architecture reads no betas: it runs 32 and 1); and
``rope_freqs.weight``, one divisor per rotary pair on the base frequencies (how Llama 3.1's
``llama3`` RoPE is written). :func:`gguf_rope` says each scaling in those terms, natively where
llama.cpp has the scaling and through ``rope_freqs`` where the frequencies are per pair (DPRoPE, a
scaling on top of Llama 3.1's); what llama.cpp cannot express is refused in one line.
The files are written by :mod:`ropestretch.gguf.write` and :mod:`ropestretch.gguf.convert`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ropestretch.errors import UsageError
from ropestretch.rope.scalings import Scaled

ARCHITECTURES = ("llama",)  # where llama.cpp applies rope_freqs and these keys as written here
ROPE_FREQS = "rope_freqs.weight"


@dataclass
class GgufRope:
    """Metadata values (key without the ``{arch}.`` prefix -> value) and the per-pair divisors for
    ``rope_freqs.weight`` (None: the file has no such tensor)."""

    keys: dict[str, Any]
    freq_factors: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


LLAMA_CPP_BETAS = (32.0, 1.0)  # yarn's beta_fast and beta_slow as llama.cpp's llama architecture runs them


def llama_cpp_yarn(theta: float, pairs: int, factor: float, original: int) -> np.ndarray:
    """The inverse frequencies llama.cpp runs for yarn (ggml's rope: correction range rounded out,
    a linear ramp between interpolated and extrapolated frequencies, betas 32 and 1)."""
    def dim(beta: float) -> float:
        return pairs * np.log(original / (beta * 2 * np.pi)) / np.log(theta)

    low = max(0.0, np.floor(dim(LLAMA_CPP_BETAS[0])))
    high = min(2 * pairs - 1.0, np.ceil(dim(LLAMA_CPP_BETAS[1])))
    extrapolated = theta ** -(np.arange(pairs) / pairs)
    mix = 1 - np.clip((np.arange(pairs) - low) / max(0.001, high - low), 0, 1)
    return extrapolated / factor * (1 - mix) + extrapolated * mix


def yarn_keys(params: dict[str, Any], attention: float) -> dict[str, Any]:
    """A yarn RoPE's parameters (transformers' names) in llama.cpp's keys, or one line where
    llama.cpp would run it otherwise: it rounds the correction range, computes the attention factor
    as ``1 + 0.1 ln s`` itself, and takes betas 32 and 1 whatever the file says."""
    factor = float(params["factor"])
    if params.get("truncate") is False:
        raise UsageError("this yarn RoPE does not round its correction range (truncate: false); llama.cpp always does")
    betas = (float(params.get("beta_fast") or 32.0), float(params.get("beta_slow") or 1.0))
    if betas != LLAMA_CPP_BETAS:
        raise UsageError(f"yarn's betas here are {betas[0]:g} and {betas[1]:g}; llama.cpp's llama architecture reads no "
                         "betas from the file and runs 32 and 1: export yarn with the default betas for llama.cpp")
    if abs(attention - (0.1 * np.log(factor) + 1.0)) > 1e-4:
        raise UsageError(f"yarn's attention factor here is {attention:.4f}; llama.cpp computes "
                         f"{0.1 * np.log(factor) + 1.0:.4f} (1 + 0.1 ln s) and takes no other")
    return {"rope.scaling.type": "yarn", "rope.scaling.factor": factor,
            "rope.scaling.original_context_length": int(params["original_max_position_embeddings"])}


def _check_runnable(kind: str, context_length: float, partial: str | None) -> None:
    """What neither GGUF source can write: a context length over 32 bits, a RoPE that rotates part
    of the head (``partial``: how much it rotates), dynamic NTK."""
    if context_length >= 1 << 32:
        raise UsageError(f"GGUF stores the context length in 32 bits; {int(context_length):,} does not fit")
    if partial:
        raise UsageError(f"GGUF output covers models that rotate the whole head; this one rotates {partial}")
    if "dynamic" in kind:
        raise UsageError("llama.cpp has no dynamic NTK: its RoPE is fixed when the model loads. Apply ntk "
                         "(one larger base, the same at every length) or yarn instead")


def gguf_rope(scaled: Scaled) -> GgufRope:
    """``scaled`` as llama.cpp reads it, or a UsageError naming what llama.cpp lacks for it."""
    rope, exported = scaled.rope, scaled.exported
    _check_runnable(scaled.scaling, scaled.target,
                    f"{rope.partial_rotary_factor:g} of it" if rope.partial_rotary_factor != 1.0 else None)
    keys: dict[str, Any] = {"context_length": int(scaled.target), "rope.freq_base": float(rope.base),
                            "rope.scaling.type": "none", "rope.scaling.factor": 1.0}
    if not rope.plain:  # Llama 3.1's llama3, or another scaling already in the model: per-pair divisors
        if abs(scaled.attention_factor - 1.0) > 1e-6:
            raise UsageError(f"{scaled.scaling} on top of the model's {rope.rope_type} RoPE scales attention by "
                             f"{scaled.attention_factor:.4f}, and llama.cpp applies no attention factor together "
                             "with per-pair frequencies; apply linear or dprope instead")
        return GgufRope(keys, np.asarray(scaled.factors, dtype=np.float32))
    if scaled.scaling == "none":
        return GgufRope(keys)
    if scaled.scaling == "linear":
        keys.update({"rope.scaling.type": "linear", "rope.scaling.factor": float(scaled.factor)})
        return GgufRope(keys)
    if scaled.scaling == "ntk":
        keys["rope.freq_base"] = float(exported.base)
        return GgufRope(keys)
    if scaled.scaling == "yarn":
        keys.update(yarn_keys({"factor": scaled.factor, **exported.scaling}, scaled.attention_factor))
        return GgufRope(keys)
    if abs(scaled.attention_factor - 1.0) > 1e-6:
        raise UsageError(f"{scaled.scaling} scales attention by {scaled.attention_factor:.4f}, which llama.cpp cannot "
                         "apply together with per-pair frequencies")
    return GgufRope(keys, np.asarray(scaled.factors, dtype=np.float32))


def rotary_module(config):
    """The rotary module transformers builds for ``config`` (a ``PretrainedConfig``), or one line
    where this transformers has none that takes a config."""
    import importlib

    name = config.model_type
    module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    architectures = getattr(config, "architectures", None)
    prefix = architectures[0].split("For")[0] if architectures else name.capitalize()
    cls = getattr(module, f"{prefix}RotaryEmbedding", None)
    try:
        return cls(config=config)
    except TypeError:  # no such class, or one of an older transformers that takes no config
        raise UsageError(f"this transformers has no rotary module ropestretch can build from a config for "
                         f"{name}; upgrade transformers (4.48 or later)") from None


def transformers_rotary(config) -> tuple[np.ndarray, float]:
    """The inverse frequencies (float64) and attention scaling of the rotary module transformers
    builds for ``config``: what the checkpoint runs, read from transformers itself rather than
    recomputed here."""
    rotary = rotary_module(config)
    return rotary.inv_freq.double().numpy(), float(rotary.attention_scaling)


def checkpoint_rope(config) -> GgufRope:
    """The RoPE a transformers checkpoint runs (``config``, a ``PretrainedConfig``), in llama.cpp's
    terms: ``yarn`` and ``linear`` as llama.cpp's own scalings, an unscaled or NTK RoPE as its base,
    and every other per-pair RoPE (Llama 3.1's llama3, a longrope or DPRoPE export) as
    ``rope_freqs`` divisors of the frequencies transformers computes. One line where llama.cpp
    cannot run it."""
    inv, attention = transformers_rotary(config)
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    base = theta ** -(np.arange(len(inv), dtype=np.float64) / len(inv))
    # max_position_embeddings of a linear export is the window before scaling, as vLLM reads it
    length = round(config.max_position_embeddings * (float(params["factor"]) if kind == "linear" else 1))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    _check_runnable(kind, length, f"{2 * len(inv)} of {head_dim} dimensions" if 2 * len(inv) != head_dim else None)
    if kind == "longrope" and list(params.get("short_factor") or []) != list(params.get("long_factor") or []):
        raise UsageError("this longrope RoPE switches from its short to its long factors with the sequence length, "
                         "which llama.cpp's llama architecture cannot; export dprope or yarn instead")
    keys: dict[str, Any] = {"context_length": int(length), "rope.freq_base": theta,
                            "rope.scaling.type": "none", "rope.scaling.factor": 1.0}
    if kind == "yarn":
        keys.update(yarn_keys(params, attention))
        served = llama_cpp_yarn(theta, len(inv), keys["rope.scaling.factor"],
                                keys["rope.scaling.original_context_length"])
        if not np.allclose(served, inv, rtol=1e-5, atol=0):
            raise UsageError("llama.cpp's yarn, from this config's factor and original window, gives other "
                             "frequencies than transformers does for it; export it again with ropestretch apply")
        return GgufRope(keys)
    if abs(attention - 1.0) > 1e-6:
        raise UsageError(f"this checkpoint's {kind} RoPE scales attention by {attention:.4f}, which llama.cpp "
                         "applies only with its own yarn")
    if kind == "default" and np.allclose(inv, base, rtol=1e-6, atol=0):
        return GgufRope(keys)
    if kind == "linear" and np.allclose(inv, base / float(params["factor"]), rtol=1e-6, atol=0):
        keys.update({"rope.scaling.type": "linear", "rope.scaling.factor": float(params["factor"])})
        return GgufRope(keys)
    return GgufRope(keys, (base / inv).astype(np.float32))
