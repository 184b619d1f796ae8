"""Rotary-angle distributions and their disturbance: the measurement behind DPRoPE.

docs/methods.md (DPRoPE), as the authors' released code does it: per pair, the angles
``(m * theta) mod 2pi`` for integer ``m`` in ``[0, n)``, in float32, counted into ``B`` equal bins
on ``[0, 2pi)``; every bin starts at ``2^-14``; the counts are divided by ``n``. The disturbance
of a candidate ``Q`` is ``KL(P || Q) = sum_k P_k log(P_k / Q_k)`` against the pre-trained ``P``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ropestretch.errors import UsageError
from ropestretch.rope.config import RopeConfig, is_finite_number
from ropestretch.rope.frequencies import rope_frequencies

FLOOR = 2.0**-14  # float16's smallest normal: the released code's starting count per bin
_CHUNK = 1 << 22  # angles per block, to bound memory at long targets


def check_bins(bins: object) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise UsageError(f"bins must be an integer >= 2, got {bins!r}")
    return bins


def angle_distribution(inv_freq: torch.Tensor, length: int, bins: int = 360) -> torch.Tensor:
    """Per pair, the histogram of rotary angles over positions ``[0, length)``.

    Returns a float32 tensor ``(pairs, bins)``: ``(2^-14 + count) / length`` per bin.
    """
    bins = check_bins(bins)
    inv_freq = inv_freq.to(torch.float32).reshape(-1, 1)
    counts = torch.full((inv_freq.shape[0], bins), FLOOR, dtype=torch.float32)
    step = max(1, _CHUNK // max(1, inv_freq.shape[0]))
    scale = bins / (2 * math.pi)
    for start in range(0, length, step):
        positions = torch.arange(start, min(length, start + step), dtype=torch.int64)
        angles = torch.remainder(positions * inv_freq, 2 * math.pi)
        index = torch.floor(scale * angles).long().clamp_(0, bins - 1)
        counts.scatter_add_(1, index, torch.ones_like(angles))
    return counts / length


def disturbance(reference: torch.Tensor, candidate: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Per pair, ``KL(reference || candidate)`` summed over bins (``reverse``: ``KL(candidate || reference)``).

    The default direction is the released code's; it reproduces the paper's Table 3.
    """
    p, q = reference.double(), candidate.double()
    if reverse:
        p, q = q, p
    return (p * (p.log() - q.log())).sum(dim=-1)


@dataclass(frozen=True)
class DPRopeChoice:
    """DPRoPE's per-pair decision and the disturbances it rests on.

    Attributes:
        extrapolation: per-pair disturbance of keeping ``theta_i`` over ``[0, L)``.
        interpolation: per-pair disturbance of ``theta_i / s`` over ``[0, L)``.
        interpolate: per-pair boolean, True where the pair is interpolated.
        threshold: the threshold ``t`` the choice corresponds to.
    """

    extrapolation: torch.Tensor
    interpolation: torch.Tensor
    interpolate: torch.Tensor
    threshold: float

    @property
    def chosen(self) -> torch.Tensor:
        """Per-pair disturbance of the chosen candidate."""
        return torch.where(self.interpolate, self.interpolation, self.extrapolation)

    @property
    def n_hat(self) -> int:
        """Interpolated dimensions (two per pair), the paper's ``n_hat``."""
        return 2 * int(self.interpolate.sum())


def select(extrapolation: torch.Tensor, interpolation: torch.Tensor, threshold: float | None = None,
           n_hat: int | None = None, prefer_interpolation: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Interpolate pair ``i`` iff ``D_i(E) > D_i(I) + t``.

    With ``n_hat`` (interpolated dimensions, two per pair), ``t`` is chosen so that exactly
    ``n_hat / 2`` pairs interpolate: those where extrapolation disturbs most beyond interpolation.
    ``prefer_interpolation`` marks pairs that interpolate when the two candidates tie (equal
    disturbance to 1e-9, with threshold 0): see :func:`dprope_choice`. Returns the mask and the
    threshold used.
    """
    pairs = extrapolation.shape[0]
    if threshold is not None and n_hat is not None:
        raise UsageError("give a threshold or n_hat, not both")
    margin = extrapolation - interpolation
    if n_hat is None:
        t = 0.0 if threshold is None else threshold
        if not is_finite_number(t):
            raise UsageError(f"threshold must be a finite number, got {threshold!r}")
        mask = margin > t
        if prefer_interpolation is not None and t == 0:
            tie = torch.isclose(extrapolation, interpolation, rtol=1e-9, atol=1e-12)
            mask = mask | (tie & prefer_interpolation)
        return mask, float(t)
    if isinstance(n_hat, bool) or not isinstance(n_hat, int) or not 0 <= n_hat <= 2 * pairs:
        raise UsageError(f"n_hat counts interpolated dimensions: an integer in 0..{2 * pairs}, got {n_hat!r}")
    if n_hat % 2:
        raise UsageError(f"n_hat counts dimensions, two per pair: it must be even, got {n_hat}")
    k = n_hat // 2
    order = torch.argsort(margin, descending=True, stable=True)
    mask = torch.zeros(pairs, dtype=torch.bool)
    mask[order[:k]] = True
    if k == 0:
        t = float(margin.max())
    elif k == pairs:
        t = float(margin.min()) - 1e-12
    else:  # any t in [margin[k], margin[k-1]) gives this set; report the midpoint
        t = float((margin[order[k - 1]] + margin[order[k]]) / 2)
    return mask, t


def dprope_choice(rope: RopeConfig, target: int, bins: int = 360, threshold: float | None = None,
                  n_hat: int | None = None, reverse: bool = False) -> DPRopeChoice:
    """DPRoPE's per-pair choice between extrapolation and interpolation for ``rope`` at ``target``.

    The reference is the distribution the model saw: its effective frequencies ``f_i`` (already
    scaled, for Llama 3.1 or Phi-3) over its window ``[0, N)``; the candidates are ``f_i`` and
    ``f_i / s`` over ``[0, L)``.

    Ties: when both candidates disturb the distribution equally (a pair so slow that all its angles
    over ``[0, L)`` fall in the first bin either way: with 360 bins, Cohere's five slowest pairs at
    ``rope_theta`` 8e6), a pair whose wavelength exceeds ``N`` is interpolated. It never completed a
    turn in pre-training, and extrapolating it would carry its angles ``s`` times past anything the
    model saw; interpolation keeps them within that range. A pair that does turn within ``N`` keeps
    extrapolation on a tie, as the released code does.
    """
    from ropestretch.budgets import check_histogram

    bins = check_bins(bins)
    check_histogram(rope.pairs, bins, target)
    theta, _ = rope_frequencies(rope)
    pretrained = angle_distribution(theta, rope.window, bins)
    d_e = disturbance(pretrained, angle_distribution(theta, target, bins), reverse)
    d_i = disturbance(pretrained, angle_distribution(theta / (target / rope.window), target, bins), reverse)
    slow = 2 * math.pi / theta.double() > rope.window
    mask, t = select(d_e, d_i, threshold, n_hat, prefer_interpolation=slow)
    return DPRopeChoice(d_e, d_i, mask, t)


def method_disturbance(scaled, bins: int = 360, reverse: bool = False,
                       pretrained: torch.Tensor | None = None) -> float:
    """Mean over pairs of a scaled RoPE's disturbance over ``[0, L)`` against the model's own
    distribution over ``[0, N)`` (the paper's Table 3 entry).

    For DPRoPE, the mean of the chosen candidates' disturbances (the quantity it minimises).
    """
    choice = scaled.details.get("choice")
    if choice is not None:
        return float(choice.chosen.mean())
    from ropestretch.budgets import check_histogram

    rope = scaled.rope
    check_histogram(rope.pairs, bins, scaled.target)
    if pretrained is None:
        pretrained = angle_distribution(rope_frequencies(rope)[0], rope.window, bins)
    candidate = angle_distribution(scaled.inv_freq, scaled.target, bins)
    return float(disturbance(pretrained, candidate, reverse).mean())
