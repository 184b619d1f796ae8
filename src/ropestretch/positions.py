"""Training-time position ids: fine-tune inside the window ``N`` while learning distances up to ``L``.

Each sampler is one function in :data:`SAMPLERS`: given a batch size, the window ``N``, the target
``L`` and a ``torch.Generator``, it returns an int64 tensor ``(batch, length)`` of strictly
increasing positions in ``[0, L)``; ``length`` is ``N``, except for ``full`` (``L``). Everything is
vectorised over the batch and reproducible from the generator's seed. docs/methods.md
fixes the samplers; CREAM follows the authors' released code, drawn per sample.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ropestretch.errors import UsageError
from ropestretch.options import Option, option_values

SamplerFn = Callable[..., torch.Tensor]
SAMPLERS: dict[str, SamplerFn] = {}
SAMPLER_OPTIONS: dict[str, tuple[Option, ...]] = {}  # each sampler's options, declared beside it
_FULL_LENGTH: set[str] = set()


def register(name: str, *options: Option, full_length: bool = False) -> Callable[[SamplerFn], SamplerFn]:
    """Add a sampler to :data:`SAMPLERS` with the options it takes (its keyword arguments, from
    which ``positions``' flags and ``train``'s ``--NAME-OPTION`` fields and YAML keys are
    generated); ``full_length`` samplers return ``L`` positions, not ``N``."""

    def add(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[name] = fn
        SAMPLER_OPTIONS[name] = tuple(options)
        if full_length:
            _FULL_LENGTH.add(name)
        return fn

    return add


def sample_length(method: str, window: int, target: int) -> int:
    """Tokens per training sample for ``method``: ``L`` for full-length fine-tuning, else ``N``."""
    _check_method(method)
    return target if method in _FULL_LENGTH else window


def _check_method(method: str) -> None:
    if method not in SAMPLERS:
        raise UsageError(f"unknown positions method {method!r}; choose one of: {', '.join(SAMPLERS)}")


def check_lengths(window: Any, target: Any) -> tuple[int, int]:
    """``(N, L)`` as ints, or a :class:`UsageError`: both positive integers and ``L >= N``."""
    for name, value in (("window", window), ("target", target)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise UsageError(f"{name} length must be a positive integer, got {value!r}")
    if target < window:
        raise UsageError(f"target length {target} must be at least the window {window}")
    return int(window), int(target)


def sample_positions(method: str, batch: int, window: int, target: int, seed: int | None = None,
                     generator: torch.Generator | None = None, **options: Any) -> torch.Tensor:
    """Draw ``batch`` rows of training position ids with ``method`` (see :data:`SAMPLERS`).

    Give ``seed`` or a ``generator``; the same seed gives the same positions.
    """
    _check_method(method)
    window, target = check_lengths(window, target)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return SAMPLERS[method](batch, window, target, generator, **sampler_options(method, options))


def sampler_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options given (not None) for ``method``, checked against the ones it declares."""
    given = {k: v for k, v in options.items() if v is not None}
    option_values(SAMPLER_OPTIONS.get(method, ()), given, f"positions method {method!r}")
    return given


def segments_to_positions(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rows made of contiguous segments: row ``b`` is ``starts[b, j] .. starts[b, j] + lengths[b, j] - 1``
    for each segment ``j`` in turn. One ``np.repeat`` over the whole batch: the fast path that keeps
    sampling far from any training step's cost."""
    starts_np, lengths_np = starts.numpy().ravel(), lengths.numpy().ravel()
    width = int(lengths[0].sum())
    first = np.cumsum(lengths_np) - lengths_np  # flat index where each segment begins
    out = np.arange(starts.shape[0] * width, dtype=np.int64)
    out -= np.repeat(first - starts_np, lengths_np)
    return torch.from_numpy(out.reshape(starts.shape[0], width))


def _uniform_int(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per element, a uniform integer in ``[low, high]`` (inclusive, int64 tensors)."""
    u = torch.rand(low.shape, generator=generator, dtype=torch.float64)
    return low + torch.floor(u * (high - low + 1).to(torch.float64)).long().clamp_max_(high - low)


@register("none")
def plain(batch: int, window: int, target: int, generator: torch.Generator) -> torch.Tensor:
    """Plain fine-tuning at the window: positions ``0 .. N-1`` (learns nothing beyond ``N``)."""
    return torch.arange(window, dtype=torch.int64).expand(batch, window).clone()


@register("full", full_length=True)
def full(batch: int, window: int, target: int, generator: torch.Generator) -> torch.Tensor:
    """Full-length fine-tuning on ``L``-token sequences, positions ``0 .. L-1``: the cost reference."""
    return torch.arange(target, dtype=torch.int64).expand(batch, target).clone()


@register("pose")
def pose(batch: int, window: int, target: int, generator: torch.Generator) -> torch.Tensor:
    """PoSE (Zhu et al., ICLR 2024, arXiv 2309.10400), two chunks.

    ``l1`` uniform in ``[1, (N+1)//2]``, skip ``u`` uniform in ``[0, L-N]``: positions
    ``0 .. l1-1`` then ``l1+u .. N-1+u``.
    """
    ones = torch.ones(batch, dtype=torch.int64)
    l1 = _uniform_int(ones, ones * ((window + 1) // 2), generator)
    skip = _uniform_int(ones * 0, ones * (target - window), generator)
    starts = torch.stack([torch.zeros_like(l1), l1 + skip], dim=1)
    return segments_to_positions(starts, torch.stack([l1, window - l1], dim=1))


@register("randpos")
def randpos(batch: int, window: int, target: int, generator: torch.Generator) -> torch.Tensor:
    """RandPos (Ruoss et al., ACL 2023, arXiv 2305.16843): a sorted uniform sample of ``N`` distinct
    positions from ``[0, L)``, per row (numpy's sampling without replacement, seeded from ``generator``)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    out = np.empty((batch, window), dtype=np.int64)
    for row in out:
        row[:] = rng.choice(target, window, replace=False)
    out.sort(axis=1)
    return torch.from_numpy(out)


@dataclass(frozen=True)
class CreamDraw:
    """One batch of CREAM's random choices, per sample.

    Attributes:
        k: head and tail length (``N // 3`` for relativity, ``k`` for continuity).
        relativity: True where the sample uses the relativity strategy.
        ratio: the truncated-Gaussian integer ``r`` in ``{2 .. 2f}`` (0 for a uniform middle).
        end: the middle segment's last position ``e``.
    """

    k: torch.Tensor
    relativity: torch.Tensor
    ratio: torch.Tensor
    end: torch.Tensor
    window: int
    target: int

    @property
    def middle_length(self) -> torch.Tensor:
        return self.window - 2 * self.k

    @property
    def middle_start(self) -> torch.Tensor:
        return self.end - self.middle_length + 1

    def positions(self) -> torch.Tensor:
        """Head ``0 .. k-1``, middle ``e-Lm+1 .. e``, tail ``L-k .. L-1``."""
        starts = torch.stack([torch.zeros_like(self.k), self.middle_start, self.target - self.k], dim=1)
        return segments_to_positions(starts, torch.stack([self.k, self.middle_length, self.k], dim=1))


def cream_draw(batch: int, window: int, target: int, generator: torch.Generator, *,
               strategy: str = "both", middle: str = "gaussian", k: int = 32,
               mu: float | None = None, sigma: float | None = None) -> CreamDraw:
    """CREAM's per-sample choices (Wu et al., NeurIPS 2024, arXiv 2406.07138), as its released code.

    Args:
        strategy: ``both`` (relativity ``k = N//3`` or continuity ``k``, 1/2 each), ``relativity``
            or ``continuity`` (the paper's one-strategy ablations).
        middle: ``gaussian`` (truncated Gaussian, the method) or ``uniform`` (the ablation: middle
            end uniform over every place between head and tail).
        k: continuity head/tail length (paper: 32).
        mu, sigma: the Gaussian over the grid ``[2, 2f]``; default ``f + 1`` and ``3 (f - 1) / 7``
            (the released code's 9 and 3 at f = 8).
    """
    window, target = check_lengths(window, target)
    if strategy not in ("both", "relativity", "continuity"):
        raise UsageError(f"CREAM strategy must be both, relativity or continuity, got {strategy!r}")
    if middle not in ("gaussian", "uniform"):
        raise UsageError(f"CREAM middle must be gaussian or uniform, got {middle!r}")
    f = target / window
    k_rel = window // 3
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or 2 * k >= window:
        raise UsageError(f"CREAM k must be an integer with 1 <= k < half the {window}-token row = {window / 2:g}, "
                         f"got {k!r} (positions --k, train --cream-k)")
    if strategy != "continuity" and k_rel < 1:
        raise UsageError(f"window {window} is too short for CREAM's relativity strategy (N // 3 = 0)")
    mu = f + 1 if mu is None else mu
    if sigma is not None and (not isinstance(sigma, (int, float)) or not sigma > 0):
        raise UsageError(f"CREAM sigma must be > 0, got {sigma!r}")
    sigma = 3 * (f - 1) / 7 if sigma is None else sigma

    coin = torch.rand(batch, generator=generator, dtype=torch.float64) < 0.5
    relativity = {"both": coin, "relativity": torch.ones_like(coin), "continuity": torch.zeros_like(coin)}[strategy]
    kk = torch.where(relativity, k_rel, int(k)).long()
    lm = window - 2 * kk
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    if middle == "uniform":
        ratio = torch.zeros(batch, dtype=torch.int64)
        low, high = kk + lm - 1, torch.full_like(kk, target) - kk - 1
    else:
        ratio = truncated_gaussian_ratio(u.numpy(), f, mu, sigma)
        ratio = torch.from_numpy(ratio)
        low = torch.floor(kk + (lm - 1) * ratio / 2).long()
        high = torch.floor(ratio * window / 2).long() - kk - 1
    end = _uniform_int(low, high, generator)
    return CreamDraw(kk, relativity, ratio, end, window, target)


def truncated_gaussian_ratio(u: np.ndarray, f: float, mu: float, sigma: float) -> np.ndarray:
    """CREAM's ``r``: inverse CDF of Normal(mu, sigma) on ``linspace(2, 2f, 1000)``, clamped to the
    grid's ends, floored to an integer in ``{2 .. floor(2f)}``."""
    if 2 * f < 3:  # only r = 2 exists
        return np.full(u.shape, 2, dtype=np.int64)
    grid = np.linspace(2, 2 * f, 1000)
    cdf = 0.5 * (1 + np.vectorize(math.erf)((grid - mu) / (sigma * math.sqrt(2))))
    return np.clip(np.interp(u, cdf, grid).astype(np.int64), 2, int(math.floor(2 * f)))


@register("cream",
          Option("k", 32, "continuity head/tail length", kind="int"),
          Option("mu", None, "the middle's Gaussian mean on [2, 2f] (default f + 1)", kind="float"),
          Option("sigma", None, "the middle's Gaussian std (default 3 (f - 1) / 7)", kind="float"),
          Option("strategy", "both", "both (relativity or continuity, half each), relativity or continuity",
                 choices=("both", "relativity", "continuity"), kind="str"),
          Option("middle", "gaussian", "gaussian (the method) or uniform (the ablation)",
                 choices=("gaussian", "uniform"), kind="str"))
def cream(batch: int, window: int, target: int, generator: torch.Generator, **options: Any) -> torch.Tensor:
    """CREAM: head / middle / tail segments, middle placed by a truncated Gaussian (see :func:`cream_draw`)."""
    return cream_draw(batch, window, target, generator, **options).positions()


# --- statistics -------------------------------------------------------------------------------


def row_coverage(row: np.ndarray, target: int) -> np.ndarray:
    """Boolean array over distances ``0 .. L-1``: which ``p_j - p_i`` (``i < j``) one row of positions holds."""
    row = np.asarray(row, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(row) != 1) + 1
    starts, ends = row[np.r_[0, breaks]], row[np.r_[breaks - 1, len(row) - 1]]
    if len(starts) > 64:  # scattered positions: autocorrelation of the indicator
        x = np.zeros(target, dtype=np.float64)
        x[row] = 1
        size = 1 << int(2 * target - 1).bit_length()
        spec = np.fft.rfft(x, size)
        covered = np.fft.irfft(spec * np.conj(spec), size)[:target] > 0.5
        covered[0] = False
        return covered
    # contiguous runs: distances between runs a < b form [s_b - e_a, e_b - s_a], within a run [1, e - s]
    lo = (starts[None, :] - ends[:, None]).ravel()
    hi = (ends[None, :] - starts[:, None]).ravel()
    keep = np.triu(np.ones((len(starts), len(starts)), dtype=bool), 1).ravel()
    lo, hi = np.r_[lo[keep], np.ones(len(starts), dtype=np.int64)], np.r_[hi[keep], ends - starts]
    ok = hi >= lo
    marks = np.zeros(target + 1, dtype=np.int64)  # difference array
    np.add.at(marks, lo[ok], 1)
    np.add.at(marks, hi[ok] + 1, -1)
    return np.cumsum(marks)[:target] > 0


def relative_coverage(positions: torch.Tensor | np.ndarray, target: int) -> float:
    """Covered fraction of relative distances ``[1, L-1]`` by ``p_j - p_i`` (``i < j``) over all rows
    (CREAM's Theorem B.1)."""
    seen = np.zeros(target, dtype=bool)
    for row in np.asarray(positions, dtype=np.int64):
        seen |= row_coverage(row, target)
    return float(seen[1:].mean()) if target > 1 else 1.0


def position_stats(method: str, samples: int, window: int, target: int, seed: int = 0,
                   coverage_samples: int = 2000, **options: Any) -> dict[str, Any]:
    """Statistics of ``samples`` draws: strategy mix and middle placement (CREAM), PoSE's skip,
    and relative-distance coverage (over the first ``coverage_samples`` draws)."""
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, Any] = {"method": method, "window": window, "target": target, "samples": samples,
                             "seed": seed, "options": options}
    if method == "cream":
        draw = cream_draw(samples, window, target, gen, **sampler_options(method, options))
        positions = draw.positions()
        rel = float(draw.relativity.double().mean())
        centre = (draw.middle_start + draw.end).double() / 2 / target
        stats["strategy_fraction"] = {"relativity": rel, "continuity": 1 - rel}
        stats["middle_centre_quantiles"] = dict(zip(["q05", "q50", "q95"],
                                                    np.quantile(centre.numpy(), [0.05, 0.5, 0.95]).tolist()))
        stats["ratio_histogram"] = {int(r): int(c) for r, c in zip(*np.unique(draw.ratio.numpy(), return_counts=True))}
    else:
        positions = sample_positions(method, samples, window, target, generator=gen, **options)
        stats["strategy_fraction"] = None
        stats["middle_centre_quantiles"] = None
    if method == "pose":
        skip = (positions[:, -1] - (window - 1)).double() / max(1, target - window)
        stats["skip_quantiles"] = dict(zip(["q05", "q50", "q95"], np.quantile(skip.numpy(), [0.05, 0.5, 0.95]).tolist()))
    n_cov = min(samples, coverage_samples)
    stats["relative_coverage"] = relative_coverage(positions[:n_cov], target)
    stats["relative_coverage_samples"] = n_cov
    stats["max_position"] = int(positions.max())
    return stats | {"positions": positions}


# --- training collator ------------------------------------------------------------------------


class PositionCollator:
    """A ``transformers.Trainer`` data collator that adds ``position_ids`` from a sampler.

    Takes features with ``input_ids`` (at most the sample length: ``N``, or ``L`` for ``full``),
    and optionally ``labels`` (e.g. -100 outside assistant turns) and ``sample_id``. Pads on the
    right to the longest row, builds ``attention_mask`` and ``labels`` (-100 on padding), and draws
    ``position_ids`` for the batch. With ``sample_id`` in every feature the draw is seeded by the
    batch's ids, so a resumed run sees exactly the positions of an uninterrupted one. A row
    shorter than the batch keeps the first positions of its draw.

    ``short_share`` (mixed-window training, LongRoPE2): that share of the batches, chosen by a hash
    of their ids (deterministic, and the same after a resume), gets plain positions ``0..width-1``,
    the short regime a length-switching RoPE runs at the model's own frequencies; the others get
    the sampler's draw, exactly as without mixing. ``counts`` tells how many batches went each way.
    """

    def __init__(self, method: str, window: int, target: int, seed: int = 0, pad_token_id: int = 0,
                 short_share: float = 0.0, **options: Any):
        _check_method(method)
        self.window, self.target = check_lengths(window, target)
        self.method, self.seed, self.pad_token_id, self.options = method, int(seed), int(pad_token_id), options
        self.length = sample_length(method, self.window, self.target)
        if isinstance(short_share, bool) or not isinstance(short_share, (int, float)) or not 0 <= short_share < 1:
            raise UsageError(f"the short share of a mixed window is a fraction in [0, 1), got {short_share!r}")
        if short_share and self.length > self.window:
            raise UsageError(f"positions {method} trains on rows of the target length: no row is short")
        self.short_share = float(short_share)
        self.counts = {"short": 0, "long": 0}
        self._generator = torch.Generator().manual_seed(self.seed)
        self._regimes = np.random.default_rng(self.seed)  # batches without ids: their own stream
        sample_positions(method, 1, self.window, self.target, generator=torch.Generator(), **options)  # validate

    def is_short(self, ids: Sequence[int] | None) -> bool:
        """Whether a batch (by its sample ids) is trained in the short regime of a mixed window."""
        if ids is None:
            return bool(self._regimes.random() < self.short_share)
        digest = hashlib.blake2b(f"{self.seed}:regime:{','.join(map(str, ids))}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.short_share

    def _generator_for(self, ids: Sequence[int] | None) -> torch.Generator:
        if ids is None:
            return self._generator
        digest = hashlib.blake2b(f"{self.seed}:{','.join(map(str, ids))}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if width > self.length:
            raise UsageError(f"a training row has {width} tokens, more than the sample length {self.length}")
        batch = len(features)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.int64)
        labels = torch.full((batch, width), -100, dtype=torch.int64)
        attention = torch.zeros((batch, width), dtype=torch.int64)
        for row, (feature, n) in enumerate(zip(features, lengths)):
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.int64)
            input_ids[row, :n] = ids
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.int64) if "labels" in feature else ids
            attention[row, :n] = 1 if "attention_mask" not in feature else torch.as_tensor(feature["attention_mask"])
        labels[attention == 0] = -100
        ids = [f["sample_id"] for f in features] if all("sample_id" in f for f in features) else None
        if self.short_share and self.is_short(ids):
            positions = torch.arange(width, dtype=torch.int64).expand(batch, width).clone()
        else:
            gen = self._generator_for(ids)
            positions = SAMPLERS[self.method](batch, self.window, self.target, gen, **self.options)[:, :width]
        self.counts["short" if positions.max() < self.window else "long"] += 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                "position_ids": positions.contiguous()}
