"""RoPE frequency scalings: one small pure function per method, in one registry.

Every scaling starts from the RoPE the model already runs over its window ``N`` (its effective
per-pair frequencies ``f_i`` and attention factor, :func:`~ropestretch.rope.frequencies.rope_frequencies`),
not from the unscaled base, so it composes with a RoPE that is already scaled (Llama 3.1's
``llama3``, Phi-3's ``longrope``, Gemma 3's ``linear``). A scaling function returns a
:class:`Composition`: the new per-pair divisors of the base frequencies and attention factor, and,
where one exists, the simplest stock rope type that gives exactly those (linear on linear is
linear with the product factor). :func:`scale` exports that stock form, or else ``longrope`` with
the divisors, and computes what stock transformers will run from the exported parameters
themselves. A new scaling is one function decorated with :func:`register`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ropestretch.errors import UsageError
from ropestretch.options import Option, option_values
from ropestretch.rope.config import RopeConfig, is_finite_number
from ropestretch.rope.distribution import dprope_choice
from ropestretch.rope.frequencies import base_inv_freq, exponents, rope_frequencies, yarn_mscale, yarn_ramp


@dataclass(frozen=True)
class Composition:
    """What a scaling asks for, before it is written as a config.

    Attributes:
        divisors: per pair, ``theta_i / new inv_freq_i`` (1 = the unscaled base frequency).
        attention: the attention factor on cos and sin.
        stock: a stock RoPE (rope type and parameters) that gives exactly these, or None.
        length_dependent: the RoPE changes with the sequence length (dynamic NTK), so it has no
            static ``longrope`` form.
        details: method-specific extras (DPRoPE's per-pair disturbances).
    """

    divisors: Sequence[float]
    attention: float
    stock: RopeConfig | None = None
    length_dependent: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scaled:
    """A RoPE scaled from window ``N`` to target ``L``.

    Attributes:
        scaling: registry name of the method.
        rope: the RoPE the model had (for a model with one RoPE per layer type, the full-attention one).
        target: the target length ``L``.
        exported: the RoPE the exported config holds (its ``window`` is the exported
            ``max_position_embeddings``).
        inv_freq: the per-pair inverse frequencies stock transformers computes from ``exported`` on a
            sequence of length ``L`` (float32, ``(pairs,)``).
        attention_factor: the factor on cos and sin it computes.
        details: method-specific extras (DPRoPE's choice).
    """

    scaling: str
    rope: RopeConfig
    target: int
    exported: RopeConfig
    inv_freq: torch.Tensor
    attention_factor: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rope_parameters(self) -> dict[str, Any]:
        """The transformers 5.x ``rope_parameters`` of the extended layers."""
        return self.exported.parameters()

    @property
    def max_position_embeddings(self) -> int:
        return self.exported.window

    @property
    def factor(self) -> float:
        """The extension factor ``s = L / N``."""
        return self.target / self.rope.window

    @property
    def factors(self) -> list[float]:
        """Per-pair divisor of the unscaled base frequency, ``theta_i / inv_freq_i``."""
        ratio = base_inv_freq(self.rope).double() / self.inv_freq.double()
        return [round(float(x), 6) for x in ratio]

    @property
    def composed(self) -> bool:
        """True when the model's RoPE was already scaled and the new scaling was composed with it."""
        return not self.rope.plain


ScalingFn = Callable[..., Composition]
SCALINGS: dict[str, ScalingFn] = {}
SCALING_OPTIONS: dict[str, tuple[Option, ...]] = {}  # each scaling's options, declared beside it


def register(name: str, *options: Option) -> Callable[[ScalingFn], ScalingFn]:
    """Add a scaling function to :data:`SCALINGS` under ``name``, with the options it takes (its
    keyword arguments): ``apply``'s and ``rope``'s flags, ``train``'s ``--NAME-OPTION`` fields and
    YAML keys, and :func:`scale`'s check are generated from them."""

    def add(fn: ScalingFn) -> ScalingFn:
        SCALINGS[name] = fn
        SCALING_OPTIONS[name] = tuple(options)
        return fn

    return add


def check_target(rope: RopeConfig, target: Any) -> int:
    """The target length as an int, or a :class:`UsageError` saying why it is not usable."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) \
            or target != int(target):
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
    fam = rope.family
    if fam.softmax_reads_rope and not rope.plain and scaling != "none":
        raise UsageError(
            f"{fam.name} computes its attention scale from its {rope.rope_type} factor and mscale_all_dim, so a "
            f"new scaling on top would change attention as well as positions; ropestretch does not compose "
            f"{scaling!r} with it (only --scaling none)")
    plan = SCALINGS[scaling](rope, target, **option_values(SCALING_OPTIONS.get(scaling, ()), options,
                                                             f"scaling {scaling!r}"))
    exported = plan.stock
    if exported is None or (fam.export_types and exported.rope_type not in fam.export_types):
        if fam.export_types and "longrope" not in fam.export_types:
            raise UsageError(f"a {fam.name} config accepts only the rope types {', '.join(fam.export_types)}, "
                             f"and {scaling!r} has none of those forms")
        if plan.length_dependent:
            why = (f"a {fam.name} config accepts only {', '.join(fam.export_types)}" if rope.plain
                   else f"no stock rope type rescales a {rope.rope_type} RoPE with the sequence length")
            raise UsageError(f"{scaling!r} cannot be exported here: {why}; use ntk, yarn or dprope")
        exported = as_longrope(rope, plan.divisors, plan.attention, target)
    inv_freq, attention = rope_frequencies(exported, target)
    for value in (*inv_freq.tolist(), attention, exported.base):
        if not math.isfinite(value) or value == 0:
            raise UsageError(f"{scaling!r} to {target} gives a frequency or base that is not a finite "
                             "non-zero float32 number; choose a smaller target")
    return Scaled(scaling, rope, target, exported, inv_freq, attention, plan.details)


# --- building blocks ---------------------------------------------------------------------------


def pretrained_divisors(rope: RopeConfig) -> np.ndarray:
    """Per pair, ``theta_i / f_i`` for the frequencies ``f_i`` the model runs at its window, in
    float64 (exact for the types that store their divisors: linear, longrope)."""
    if rope.plain:
        return np.ones(rope.pairs)
    if rope.rope_type == "linear":
        return np.full(rope.pairs, float(rope.scaling["factor"]))
    if rope.rope_type == "longrope":
        p = rope.scaling
        return np.array(p["long_factor"] if rope.window > p["original_max_position_embeddings"] else p["short_factor"])
    inv_freq, _ = rope_frequencies(rope)
    return (base_inv_freq(rope).double() / inv_freq.double()).numpy()


def as_longrope(rope: RopeConfig, divisors: Sequence[float], attention: float, target: int,
                short: Sequence[float] | None = None) -> RopeConfig:
    """A ``longrope`` RoPE over ``[0, target)`` running ``theta_i / divisors_i`` with ``attention``.

    For a model that is already ``longrope`` (Phi-3), its own short factors and original window
    are kept, so sequences within that window run as before; otherwise short and long factors are
    the same. The attention factor is written for transformers (``attention_factor``) and for vLLM
    (``short_mscale``, ``long_mscale``), which reads only those. A family whose configs carry no
    attention factor (Phi-3) gets LongRoPE's own, ``sqrt(1 + ln(L/N0) / ln N0)``, in every engine.
    """
    long = tuple(float(x) for x in divisors)
    if rope.rope_type == "longrope":
        original, short = rope.scaling["original_max_position_embeddings"], tuple(rope.scaling["short_factor"])
    else:
        original, short = rope.window, (long if short is None else tuple(float(x) for x in short))
    scaling = {"factor": target / original, "original_max_position_embeddings": original, "short_factor": short,
               "long_factor": long, "attention_factor": float(attention), "short_mscale": float(attention),
               "long_mscale": float(attention)}
    if not rope.family.explicit_attention:  # LongRoPE's own factor of the new window, the only one it can carry
        scaling = {k: scaling[k] for k in ("original_max_position_embeddings", "short_factor", "long_factor")}
    return rope.replace(window=target, rope_type="longrope", scaling=scaling)


def length_switching(scaled: Scaled) -> Scaled:
    """``scaled`` as a RoPE that switches with the sequence length, for mixed-window training
    (LongRoPE2, Shang et al. 2025, arXiv 2502.20082: short sequences on the original RoPE, long ones
    on the rescaled one): a sequence within the model's window ``N`` runs the frequencies the model
    ran before (its own divisors: none for a plain RoPE, Llama 3.1's ``llama3``, Phi-3's short
    factors), a longer one the scaled frequencies. Written as ``longrope``, which transformers
    switches by the sequence length (the largest position id + 1) and vLLM by the length it is
    serving. One attention factor serves both regimes: transformers applies a single
    ``attention_factor`` (vLLM's ``short_mscale`` and ``long_mscale`` are written equal to it), so
    the short regime trains and runs with the scaled one's (YaRN's ``1 + 0.1 ln s``; 1 for linear,
    NTK and DPRoPE). A family whose config cannot hold ``longrope`` is refused in one line."""
    rope = scaled.rope
    fam = rope.family
    if scaled.scaling in ("none", "dynamic"):
        raise UsageError(f"a length-switching RoPE needs a fixed scaling for long sequences; {scaled.scaling!r} has "
                         "none (use linear, ntk, yarn or dprope)")
    if fam.export_types and "longrope" not in fam.export_types:
        raise UsageError(f"a {fam.name} config accepts only the rope types {', '.join(fam.export_types)}: it cannot "
                         "hold a length-switching (longrope) RoPE")
    long = (base_inv_freq(rope).double() / scaled.inv_freq.double()).numpy()
    exported = as_longrope(rope, long, scaled.attention_factor, scaled.target, short=pretrained_divisors(rope))
    inv_freq, attention = rope_frequencies(exported, scaled.target)
    return Scaled(scaled.scaling, rope, scaled.target, exported, inv_freq, attention,
                  {**scaled.details, "switching": True})


def _divisors_of(rope: RopeConfig, inv_freq: torch.Tensor) -> np.ndarray:
    return (base_inv_freq(rope).double() / inv_freq.double()).numpy()


def turns_ramp(inv_freq: torch.Tensor, window: int, beta_fast: float, beta_slow: float) -> torch.Tensor:
    """YaRN's ramp for any per-pair frequencies: the pairs are placed by how many turns they make over
    ``window`` (log-linear between pairs), so that for an unscaled RoPE the correction dimensions,
    their truncation and the ramp are exactly :func:`~ropestretch.rope.frequencies.yarn_ramp`'s."""
    log_turns = np.log(window * inv_freq.double().numpy() / (2 * math.pi))
    n = len(log_turns)

    def crossing(turns: float) -> float:  # continuous pair index where the pairs fall to `turns` turns
        level = math.log(turns)
        below = np.flatnonzero(log_turns <= level)
        if len(below) and below[0] > 0:
            i = int(below[0])
            return i - 1 + (log_turns[i - 1] - level) / (log_turns[i - 1] - log_turns[i])
        edge = 0 if len(below) else n - 1  # beyond the first or last pair: extend its neighbour's slope
        slope = (log_turns[1] - log_turns[0]) if edge == 0 else (log_turns[-1] - log_turns[-2])
        if n < 2 or slope >= 0:
            return float(edge)
        return edge + (level - log_turns[edge]) / slope

    dim = 2 * n
    low, high = max(math.floor(crossing(beta_fast)), 0), min(math.ceil(crossing(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    return torch.clamp((torch.arange(n, dtype=torch.float32) - low) / (high - low), 0, 1)


def _check_betas(beta_fast: Any, beta_slow: Any) -> None:
    for name, value in (("beta_fast", beta_fast), ("beta_slow", beta_slow)):
        if not is_finite_number(value) or value <= 0:
            raise UsageError(f"yarn {name} must be a positive number, got {value!r}")
    if not beta_fast > beta_slow:
        raise UsageError(f"yarn beta_fast ({beta_fast:g}) must be larger than beta_slow ({beta_slow:g})")


# --- the scalings ------------------------------------------------------------------------------


@register("none")
def scale_none(rope: RopeConfig, target: int) -> Composition:
    """No scaling: positions past the window are extrapolated (the baseline that collapses).

    The model's own RoPE is kept; where its parameters depend on ``max_position_embeddings``
    (yarn or longrope without a ``factor``), the factor is written out so nothing changes.
    """
    _, attention = rope_frequencies(rope)
    if rope.plain:  # dynamic would start rescaling past N: keep the base frequencies
        return Composition(np.ones(rope.pairs), attention, rope.replace(window=target, rope_type="default", scaling={}))
    scaling = dict(rope.scaling)
    if rope.rope_type in ("yarn", "longrope") and scaling.get("factor") is None:
        scaling["factor"] = rope.window / scaling["original_max_position_embeddings"]
    if rope.rope_type == "longrope" and rope.family.explicit_attention:
        scaling.update(attention_factor=attention, short_mscale=attention, long_mscale=attention)
    elif rope.rope_type == "longrope":  # Phi-3: its own attention factor of the new window
        scaling.pop("factor")
    return Composition(pretrained_divisors(rope), attention, rope.replace(window=target, scaling=scaling))


@register("linear")
def scale_linear(rope: RopeConfig, target: int) -> Composition:
    """Position Interpolation (Chen et al. 2023, arXiv 2306.15595): every frequency divided by ``s = L/N``.

    Exported as ``linear`` (on a linear RoPE, with the product factor). transformers ignores
    ``max_position_embeddings`` for it, and vLLM takes ``max_position_embeddings x factor`` as its
    default maximum length, so the export writes ``L / factor`` there (``N`` for an unscaled RoPE).
    """
    s = target / rope.window
    _, attention = rope_frequencies(rope)
    stock = None
    if rope.plain or rope.rope_type == "linear":
        factor = s if rope.plain else rope.scaling["factor"] * s
        # vLLM's default maximum length is max_position_embeddings x factor: make that L
        window = round(target / factor) if rope.family.engine_scales_window else target
        stock = rope.replace(window=window, rope_type="linear", scaling={"factor": factor})
    return Composition(pretrained_divisors(rope) * s, attention, stock)


def ntk_base(rope: RopeConfig, s: float) -> float:
    """NTK-aware base: ``b * s^(d/(d-2))`` (bloc97, 2023)."""
    d = rope.rotary_dim
    return rope.base * s ** (d / (d - 2))


@register("ntk")
def scale_ntk(rope: RopeConfig, target: int) -> Composition:
    """Static NTK-aware scaling (bloc97 2023): the base grows to ``b * s^(d/(d-2))``, i.e. pair ``i``'s
    frequency is divided by ``s^(2i/(d-2))``. On an unscaled or linear RoPE that is a new ``rope_theta``."""
    check_rotary_dim(rope, "ntk", minimum=4)
    s, d = target / rope.window, rope.rotary_dim
    _, attention = rope_frequencies(rope)
    stock = None
    if rope.plain or rope.rope_type == "linear":
        scaling = {} if rope.plain else dict(rope.scaling)
        stock = rope.replace(window=target, base=ntk_base(rope, s), rope_type="default" if rope.plain else "linear",
                             scaling=scaling)
    stretch = s ** (2 * np.arange(rope.pairs) / (d - 2))
    return Composition(pretrained_divisors(rope) * stretch, attention, stock)


@register("dynamic")
def scale_dynamic(rope: RopeConfig, target: int) -> Composition:
    """Dynamic NTK (emozilla, 2023), as transformers recomputes it from the sequence length.

    The frequencies reported are the ones for a sequence of length ``L``. transformers measures the
    sequence against ``max_position_embeddings``, so the export keeps the model's ``N`` there.
    Only an unscaled RoPE has a stock dynamic form.
    """
    check_rotary_dim(rope, "dynamic", minimum=4)
    s = target / rope.window
    stock = rope.replace(rope_type="dynamic", scaling={"factor": s}) if rope.plain else None
    divisors = _divisors_of(rope, rope_frequencies(stock, target)[0]) if stock else np.ones(rope.pairs)
    return Composition(divisors, 1.0, stock, length_dependent=True)


@register("yarn",
          Option("beta_fast", 32.0, "pairs turning more than this many times over the window keep their frequency",
                 kind="float"),
          Option("beta_slow", 1.0, "pairs turning fewer than this many times over the window are interpolated",
                 kind="float"))
def scale_yarn(rope: RopeConfig, target: int, beta_fast: float = 32.0, beta_slow: float = 1.0) -> Composition:
    """YaRN (Peng et al. 2023, arXiv 2309.00071): NTK-by-parts and a temperature ``0.1 ln s + 1``.

    ``beta_fast`` and ``beta_slow`` bound the ramp in turns over the window: pairs turning more than
    ``beta_fast`` times keep their frequency, fewer than ``beta_slow`` are divided by ``s``. The
    paper found 32 and 1 good for Llama's 4096-token window and says to tune them per model. On an
    unscaled RoPE this is transformers' ``yarn``; on a scaled one, the same ramp over the model's
    effective frequencies (:func:`turns_ramp`), its attention factor times YaRN's.
    """
    _check_betas(beta_fast, beta_slow)
    s = target / rope.window
    f, attention = rope_frequencies(rope)
    if rope.plain:
        stock = rope.replace(window=target, rope_type="yarn", scaling={
            "factor": s, "original_max_position_embeddings": rope.window,
            "beta_fast": float(beta_fast), "beta_slow": float(beta_slow)})
        inv_freq, attention = rope_frequencies(stock, target)
        return Composition(_divisors_of(rope, inv_freq), attention, stock)
    ramp = turns_ramp(f, rope.window, beta_fast, beta_slow).double().numpy()
    divisors = pretrained_divisors(rope) / (ramp / s + (1 - ramp))  # theta / (f/s * ramp + f * (1 - ramp))
    return Composition(divisors, attention * yarn_mscale(s))


@register("dprope",
          Option("bins", 360, "rotary-angle histogram bins on [0, 2pi)", kind="int"),
          Option("threshold", None, "interpolate a pair iff D(extrapolation) > D(interpolation) + T (default 0)",
                 metavar="T", kind="float"),
          Option("n_hat", None, "interpolate exactly K dimensions (K/2 pairs), as the paper's runs do", metavar="K",
                 kind="int"),
          Option("reverse", False, "measure KL(scaled || pre-trained) instead of KL(pre-trained || scaled)",
                 kind="bool"))
def scale_dprope(
    rope: RopeConfig,
    target: int,
    bins: int = 360,
    threshold: float | None = None,
    n_hat: int | None = None,
    reverse: bool = False,
) -> Composition:
    """DPRoPE (Wu et al. 2024, arXiv 2410.01490): per pair, interpolate or extrapolate, whichever
    keeps the rotary-angle distribution closer to the one the model saw over its window.

    Exported as ``longrope`` (per-pair divisors 1 or ``s`` times the model's own) with the model's
    attention factor (``attention_factor`` for transformers, ``short/long_mscale`` for vLLM).
    """
    choice = dprope_choice(rope, target, bins=bins, threshold=threshold, n_hat=n_hat, reverse=reverse)
    s = target / rope.window
    _, attention = rope_frequencies(rope)
    divisors = pretrained_divisors(rope) * np.where(choice.interpolate.numpy(), s, 1.0)
    return Composition(divisors, attention, details={"choice": choice})


__all__ = ["Composition", "SCALINGS", "SCALING_OPTIONS", "Scaled", "as_longrope", "base_inv_freq", "check_rotary_dim",
           "check_target", "exponents", "length_switching", "ntk_base", "pretrained_divisors", "register", "scale",
           "turns_ramp", "yarn_ramp"]
