"""RoPE frequency scalings: one small pure function per method, in one registry.

Each function takes the pre-trained :class:`RopeConfig` and a target length ``L`` and returns a
:class:`Scaled`: the per-pair inverse frequencies, the attention factor applied to cos and sin,
and the transformers 5.x ``rope_parameters`` that make stock transformers compute exactly those.
Arithmetic follows transformers' own order in float32, so what ropestretch trains is what
transformers and vLLM run. A new scaling is one function decorated with :func:`register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ropestretch.errors import UsageError
from ropestretch.rope.config import RopeConfig, is_finite_number


@dataclass(frozen=True)
class Scaled:
    """A RoPE scaled from window ``N`` to target ``L``.

    Attributes:
        scaling: registry name of the method.
        rope: the pre-trained RoPE it started from.
        target: the target length ``L``.
        inv_freq: per-pair inverse frequencies (float32, shape ``(pairs,)``); for ``dynamic``,
            the ones transformers computes for a sequence of length ``L``.
        attention_factor: the factor on cos and sin (transformers' ``attention_scaling``).
        rope_parameters: the transformers 5.x ``rope_parameters`` dict.
        max_position_embeddings: what the exported config's ``max_position_embeddings`` holds.
        details: method-specific extras (DPRoPE's per-pair disturbances).
    """

    scaling: str
    rope: RopeConfig
    target: int
    inv_freq: torch.Tensor
    attention_factor: float
    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def factor(self) -> float:
        """The extension factor ``s = L / N``."""
        return self.target / self.rope.window

    @property
    def factors(self) -> list[float]:
        """Per-pair frequency divisor ``theta_i / inv_freq_i`` (1 = extrapolation, s = interpolation)."""
        ratio = base_inv_freq(self.rope).double() / self.inv_freq.double()
        return [round(float(x), 6) for x in ratio]


ScalingFn = Callable[..., Scaled]
SCALINGS: dict[str, ScalingFn] = {}


def register(name: str) -> Callable[[ScalingFn], ScalingFn]:
    """Add a scaling function to :data:`SCALINGS` under ``name``."""

    def add(fn: ScalingFn) -> ScalingFn:
        SCALINGS[name] = fn
        return fn

    return add


def check_target(rope: RopeConfig, target: Any) -> int:
    """The target length as an int, or a :class:`UsageError` saying why it is not usable."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or target != int(target):
        raise UsageError(f"target length must be a positive integer, got {target!r}")
    if target <= 0:
        raise UsageError(f"target length must be a positive integer, got {target}")
    if target <= rope.window:
        raise UsageError(f"target length {int(target)} must be longer than the model's window {rope.window}")
    return int(target)


def check_rotary_dim(rope: RopeConfig, scaling: str, minimum: int = 2) -> None:
    """Reject a rotary dimension (head_dim x partial_rotary_factor) that ``scaling`` can't honour."""
    dim = rope.rotary_dim
    if dim < minimum or dim % 2:
        raise UsageError(
            f"scaling {scaling!r} needs an even rotary dimension of at least {minimum}, but head_dim "
            f"{rope.head_dim} x partial_rotary_factor {rope.partial_rotary_factor:g} = {dim}"
        )


def scale(rope: RopeConfig, scaling: str, target: int, **options: Any) -> Scaled:
    """Scale ``rope`` to ``target`` with the registered method ``scaling``."""
    if scaling not in SCALINGS:
        raise UsageError(f"unknown scaling {scaling!r}; choose one of: {', '.join(SCALINGS)}")
    target = check_target(rope, target)
    check_rotary_dim(rope, scaling)
    try:
        return SCALINGS[scaling](rope, target, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise UsageError(f"scaling {scaling!r} takes no option {str(err).split()[-1]}") from None
        raise


def _exponents(rope: RopeConfig) -> torch.Tensor:
    dim = rope.rotary_dim
    return torch.arange(0, dim, 2, dtype=torch.int64).float() / dim


def base_inv_freq(rope: RopeConfig, base: float | None = None) -> torch.Tensor:
    """``theta_i = b^(-2i/d)`` in float32, computed as transformers does."""
    return 1.0 / ((rope.base if base is None else base) ** _exponents(rope))


def _params(rope: RopeConfig, rope_type: str, base: float | None = None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": rope_type, "rope_theta": float(rope.base if base is None else base)}
    if rope.partial_rotary_factor != 1.0:
        params["partial_rotary_factor"] = rope.partial_rotary_factor
    params.update(extra)
    return params


@register("none")
def scale_none(rope: RopeConfig, target: int) -> Scaled:
    """No scaling: positions past the window are extrapolated (the baseline that collapses)."""
    return Scaled("none", rope, target, base_inv_freq(rope), 1.0, _params(rope, "default"), target)


@register("linear")
def scale_linear(rope: RopeConfig, target: int) -> Scaled:
    """Position Interpolation (Chen et al. 2023, arXiv 2306.15595): every ``theta_i / s``."""
    s = target / rope.window
    inv_freq = base_inv_freq(rope) / s
    return Scaled("linear", rope, target, inv_freq, 1.0, _params(rope, "linear", factor=s), target)


def ntk_base(rope: RopeConfig, s: float) -> float:
    """NTK-aware base: ``b0 * s^(d/(d-2))`` (bloc97, 2023)."""
    d = rope.rotary_dim
    return rope.base * s ** (d / (d - 2))


@register("ntk")
def scale_ntk(rope: RopeConfig, target: int) -> Scaled:
    """Static NTK-aware scaling: a larger base, exported as a plain ``default`` RoPE with new rope_theta."""
    check_rotary_dim(rope, "ntk", minimum=4)
    base = ntk_base(rope, target / rope.window)
    return Scaled("ntk", rope, target, base_inv_freq(rope, base), 1.0, _params(rope, "default", base=base), target)


@register("dynamic")
def scale_dynamic(rope: RopeConfig, target: int) -> Scaled:
    """Dynamic NTK (emozilla, 2023), as transformers recomputes it from the sequence length.

    ``inv_freq`` is the one for a sequence of length ``L``. transformers and vLLM measure the
    sequence against ``max_position_embeddings``, so the export keeps the pre-trained ``N`` there
    (writing ``L`` would switch the scaling off below ``L``).
    """
    check_rotary_dim(rope, "dynamic", minimum=4)
    s = target / rope.window
    d = rope.rotary_dim
    base = rope.base * ((s * target / rope.window) - (s - 1)) ** (d / (d - 2))
    inv_freq = base_inv_freq(rope, base)
    return Scaled("dynamic", rope, target, inv_freq, 1.0, _params(rope, "dynamic", factor=s), rope.window)


def yarn_attention_factor(s: float) -> float:
    """YaRN's temperature on cos and sin: ``0.1 ln s + 1`` (1 for ``s <= 1``)."""
    return 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0


def yarn_ramp(rope: RopeConfig, beta_fast: float = 32, beta_slow: float = 1) -> torch.Tensor:
    """Per pair, the share of interpolation in YaRN's "NTK-by-parts" mix (0 = extrapolate, 1 = interpolate).

    Pairs that turn more than ``beta_fast`` times over the window extrapolate, fewer than
    ``beta_slow`` times interpolate, with a linear ramp between the (truncated) correction dims.
    """
    d, n, b = rope.rotary_dim, rope.window, rope.base

    def correction_dim(turns: float) -> float:
        return (d * math.log(n / (turns * 2 * math.pi))) / (2 * math.log(b))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), d - 1)
    if low == high:
        high += 0.001
    return torch.clamp((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low), 0, 1)


@register("yarn")
def scale_yarn(rope: RopeConfig, target: int, beta_fast: float = 32.0, beta_slow: float = 1.0) -> Scaled:
    """YaRN (Peng et al. 2023, arXiv 2309.00071) as transformers computes it.

    ``beta_fast`` and ``beta_slow`` bound the ramp in turns over the window (see :func:`yarn_ramp`).
    The paper found 32 and 1 good for Llama's 4096-token window and says to tune them per model;
    both are exported in ``rope_parameters``, which transformers and vLLM read.
    """
    for name, value in (("beta_fast", beta_fast), ("beta_slow", beta_slow)):
        if not is_finite_number(value) or value <= 0:
            raise UsageError(f"yarn {name} must be a positive number, got {value!r}")
    if not beta_fast > beta_slow:
        raise UsageError(f"yarn beta_fast ({beta_fast:g}) must be larger than beta_slow ({beta_slow:g})")
    s = target / rope.window
    pos_freqs = rope.base ** _exponents(rope)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (s * pos_freqs)
    keep = 1 - yarn_ramp(rope, beta_fast, beta_slow)  # weight of extrapolation per pair
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    params = _params(rope, "yarn", factor=s, original_max_position_embeddings=rope.window,
                     beta_fast=float(beta_fast), beta_slow=float(beta_slow))
    return Scaled("yarn", rope, target, inv_freq, yarn_attention_factor(s), params, target)


@register("dprope")
def scale_dprope(
    rope: RopeConfig,
    target: int,
    bins: int = 360,
    threshold: float | None = None,
    n_hat: int | None = None,
    reverse: bool = False,
) -> Scaled:
    """DPRoPE (Wu et al. 2024, arXiv 2410.01490): per pair, interpolate or extrapolate, whichever
    keeps the rotary-angle distribution closer to the pre-trained one.

    Exported as ``longrope`` with ``short_factor == long_factor ==`` the per-pair factors (1 or s)
    and attention factor 1 (``attention_factor`` for transformers, ``short/long_mscale`` for vLLM).
    """
    from ropestretch.rope.distribution import dprope_choice

    choice = dprope_choice(rope, target, bins=bins, threshold=threshold, n_hat=n_hat, reverse=reverse)
    s = target / rope.window
    factors = [s if interp else 1.0 for interp in choice.interpolate.tolist()]
    ext = torch.tensor(factors, dtype=torch.float32)
    inv_freq = 1.0 / (ext * rope.base ** _exponents(rope))
    params = _params(
        rope, "longrope", factor=s, original_max_position_embeddings=rope.window,
        short_factor=factors, long_factor=list(factors),
        attention_factor=1.0, short_mscale=1.0, long_mscale=1.0,
    )
    return Scaled("dprope", rope, target, inv_freq, 1.0, params, target, details={"choice": choice})
