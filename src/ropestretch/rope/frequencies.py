"""Per-pair RoPE frequencies of every rope type transformers runs, in transformers' own float32 order.

One pure function per rope type, in :data:`ROPE_TYPES`: given a :class:`RopeConfig` and the
sequence length, it returns the inverse frequencies ``(pairs,)`` and the attention factor on cos
and sin that stock transformers computes for that config. They serve twice: to read the RoPE a
checkpoint already has (the effective frequencies over its window ``N``, from which every scaling
starts), and to compute what an exported checkpoint will run. ``tests/test_families.py`` checks
them against transformers' ``ROPE_INIT_FUNCTIONS`` and the loaded models' rotary modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ropestretch.rope.config import RopeConfig

RopeFn = Callable[[RopeConfig, int], tuple[torch.Tensor, float]]
ROPE_TYPES: dict[str, RopeFn] = {}


def rope_type(name: str) -> Callable[[RopeFn], RopeFn]:
    def add(fn: RopeFn) -> RopeFn:
        ROPE_TYPES[name] = fn
        return fn

    return add


def exponents(rope: RopeConfig) -> torch.Tensor:
    """``2i/d`` for each pair, as transformers computes it (int64 arange, then float32)."""
    dim = rope.rotary_dim
    return torch.arange(0, dim, 2, dtype=torch.int64).float() / dim


def base_inv_freq(rope: RopeConfig, base: float | None = None) -> torch.Tensor:
    """The unscaled ``theta_i = b^(-2i/d)`` in float32."""
    return 1.0 / ((rope.base if base is None else base) ** exponents(rope))


def rope_frequencies(rope: RopeConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """What the model runs on a sequence of ``seq_len`` tokens (default: its whole window ``N``):
    per-pair inverse frequencies (float32) and the attention factor."""
    return ROPE_TYPES[rope.rope_type](rope, rope.window if seq_len is None else int(seq_len))


@rope_type("default")
def default_frequencies(rope: RopeConfig, seq_len: int) -> tuple[torch.Tensor, float]:
    """Su et al. 2021 (arXiv 2104.09864): ``theta_i = b^(-2i/d)``."""
    return base_inv_freq(rope), 1.0


@rope_type("linear")
def linear_frequencies(rope: RopeConfig, seq_len: int) -> tuple[torch.Tensor, float]:
    """Position Interpolation (Chen et al. 2023, arXiv 2306.15595): ``theta_i / factor``."""
    return base_inv_freq(rope) / rope.scaling["factor"], 1.0


@rope_type("dynamic")
def dynamic_frequencies(rope: RopeConfig, seq_len: int) -> tuple[torch.Tensor, float]:
    """Dynamic NTK (emozilla 2023): the base grows with the sequence past the window,
    ``b * (factor * n / N - (factor - 1))^(d / (d - 2))`` for ``n = max(seq_len, N)``."""
    factor, d, n = rope.scaling["factor"], rope.rotary_dim, max(seq_len, rope.window)
    base = rope.base * ((factor * n / rope.window) - (factor - 1)) ** (d / (d - 2))
    return base_inv_freq(rope, base), 1.0


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's temperature ``0.1 * mscale * ln(s) + 1`` (1 for ``s <= 1``)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_ramp(dim: int, base: float, window: int, beta_fast: float, beta_slow: float,
              truncate: bool = True) -> torch.Tensor:
    """Per pair, YaRN's share of interpolation (0 = keep, 1 = interpolate): pairs that turn more than
    ``beta_fast`` times over ``window`` keep their frequency, fewer than ``beta_slow`` are interpolated,
    with a linear ramp between the (by default truncated) correction dimensions."""

    def correction_dim(turns: float) -> float:
        return (dim * math.log(window / (turns * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    return torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)


@rope_type("yarn")
def yarn_frequencies(rope: RopeConfig, seq_len: int) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023, arXiv 2309.00071), NTK-by-parts with a temperature; DeepSeek's
    ``mscale`` / ``mscale_all_dim`` variant where the config gives them."""
    p = rope.scaling
    original = p["original_max_position_embeddings"]
    factor = p.get("factor") or rope.window / original
    attention = p.get("attention_factor")
    if attention is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention = yarn_mscale(factor, p["mscale"]) / yarn_mscale(factor, p["mscale_all_dim"])
        else:
            attention = yarn_mscale(factor)
    pos_freqs = rope.base ** exponents(rope)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = yarn_ramp(rope.rotary_dim, rope.base, original, p.get("beta_fast") or 32, p.get("beta_slow") or 1,
                     p.get("truncate", True))
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep, float(attention)


def longrope_attention(rope: RopeConfig) -> float:
    """LongRoPE's attention factor: the config's, else ``sqrt(1 + ln s / ln N0)`` for ``s = factor``
    (or window over original window)."""
    p = rope.scaling
    if p.get("attention_factor") is not None:
        return float(p["attention_factor"])
    original = p["original_max_position_embeddings"]
    factor = p.get("factor") or rope.window / original
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))


@rope_type("longrope")
def longrope_frequencies(rope: RopeConfig, seq_len: int) -> tuple[torch.Tensor, float]:
    """LongRoPE (Ding et al. 2024, arXiv 2402.13753): per-pair divisors of ``theta_i``, the long ones
    for sequences past the original window, the short ones within it."""
    p = rope.scaling
    chosen = p["long_factor"] if seq_len > p["original_max_position_embeddings"] else p["short_factor"]
    ext = torch.tensor(chosen, dtype=torch.float32)
    return 1.0 / (ext * rope.base ** exponents(rope)), longrope_attention(rope)


@rope_type("llama3")
def llama3_frequencies(rope: RopeConfig, seq_len: int) -> tuple[torch.Tensor, float]:
    """Llama 3.1 (Meta 2024): wavelengths shorter than ``N0 / high_freq_factor`` kept, longer than
    ``N0 / low_freq_factor`` divided by ``factor``, a smooth mix between."""
    p = rope.scaling
    inv_freq = base_inv_freq(rope)
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    original = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) * ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled), 1.0
