"""The statistics reports print, each one scipy's: Wilson intervals for rates, Student-t intervals
for means, McNemar's exact test and a paired bootstrap for two runs over the same prompts. This
module only picks the methods and the confidence level, and handles the sizes they are undefined at."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999
# Below this many independent pairs a percentile bootstrap covers well under its 95% (for normal
# differences about 81% at 4 pairs, which tests/test_stats.py measures, and about 90% at 8 and 94%
# at 20 in a run of 300 draws each), so paired_interval gives the paired Student-t interval there.
BOOTSTRAP_MIN_PAIRS = 20


def _pairs(a: Sequence, b: Sequence, dtype: type = float) -> tuple[np.ndarray, np.ndarray]:
    """Two paired series as arrays, refused when they differ in length."""
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if a.shape != b.shape:
        raise ValueError(f"paired series differ in length: {a.size} and {b.size}")
    return a, b


def wilson(correct: int, n: int) -> tuple[float, float]:
    """The Wilson score interval of a rate ``correct / n`` (Wilson 1927): unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0 of n or n of n."""
    from scipy.stats import binomtest

    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """The mean and its Student-t interval; the interval is NaN below two values."""
    from scipy.stats import ttest_1samp

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    if np.ptp(x) == 0:  # no spread: the interval is the point (scipy would return NaN)
        return mean, mean, mean
    ci = ttest_1samp(x, 0.0).confidence_interval(confidence_level=CONFIDENCE)
    return mean, float(ci.low), float(ci.high)


def paired_interval(a: Sequence[float], b: Sequence[float], seed: int = 0) -> tuple[float, float, float, str]:
    """The mean of ``a - b`` over independent pairs, its 95% interval, and the method that gave it:
    the paired bootstrap from :data:`BOOTSTRAP_MIN_PAIRS` pairs on ("bootstrap"), the paired
    Student-t interval below that ("t"), where the bootstrap would claim more than it knows."""
    a, b = _pairs(a, b)
    if a.size >= BOOTSTRAP_MIN_PAIRS:
        return (*paired_bootstrap(a, b, seed), "bootstrap")
    return (*mean_interval(a - b), "t")


def paired_ratio(log_a: Sequence[float], log_b: Sequence[float]) -> tuple[float, float, float]:
    """The ratio of two geometric means over the same units (perplexity a / b from each window's
    per-token NLL under a and b): exp of the mean difference of the logs and of its paired
    Student-t interval, which cancels what the units share (one window is hard for both)."""
    a, b = _pairs(log_a, log_b)
    mean, low, high = mean_interval(a - b)
    return safe_exp(mean), safe_exp(low), safe_exp(high)


def safe_exp(x: float) -> float:
    """exp, with infinity where it overflows (a perplexity of a hand-edited or diverged NLL)."""
    with np.errstate(over="ignore"):
        return float(np.exp(x))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """McNemar's exact test of two paired right/wrong series: the counts right only in ``a`` and
    right only in ``b``, and the two-sided p of the binomial test of those discordant pairs at 1/2
    (1.0 when there are none)."""
    from scipy.stats import binomtest

    a, b = _pairs(a, b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """The mean of ``a - b`` over pairs and its paired bootstrap percentile interval (pairs are
    resampled together, so what the two share cancels); NaN below two pairs."""
    from scipy.stats import bootstrap

    a, b = _pairs(a, b)
    if a.size == 0:
        return math.nan, math.nan, math.nan
    diff = float((a - b).mean())
    if a.size < 2:
        return diff, math.nan, math.nan
    if np.ptp(a - b) == 0:
        return diff, diff, diff
    res = bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                    n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                    rng=np.random.default_rng(seed))
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def share_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """The mean of per-sample shares in [0, 1] (RULER's per-sample score) and its 95% interval:
    Wilson's where every share is 0 or 1, else Student's t clipped to [0, 1]."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if np.all((x == 0) | (x == 1)):
        low, high = wilson(int(x.sum()), int(x.size))
        return float(x.mean()), low, high
    mean, low, high = mean_interval(x)
    return mean, max(0.0, low), min(1.0, high)


def stratified_mean_interval(groups: Sequence[Sequence[float]], resamples: int = 2000,
                             seed: int = 0) -> tuple[float, float, float]:
    """The unweighted mean of the groups' means (RULER's average over tasks) and its 95% percentile
    bootstrap interval, each group resampled within itself."""
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return math.nan, math.nan, math.nan
    point = float(np.mean([a.mean() for a in arrays]))
    rng = np.random.default_rng(seed)
    draws = np.mean([a[rng.integers(0, a.size, (resamples, a.size))].mean(axis=1) for a in arrays], axis=0)
    alpha = (1 - CONFIDENCE) / 2
    return point, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def paired_ratio_of_means(a: Sequence[float], b: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) / mean(b)`` over paired units (a fine-tune's in-window accuracy over its base's:
    the share it retains) and its 95% paired percentile bootstrap interval (units resampled
    together); NaN where the base's mean is 0 or there are fewer than two units."""
    from scipy.stats import bootstrap

    a, b = _pairs(a, b)
    if a.size == 0 or b.mean() == 0:
        return math.nan, math.nan, math.nan
    ratio = float(a.mean() / b.mean())
    if a.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return ratio, (ratio if a.size >= 2 else math.nan), (ratio if a.size >= 2 else math.nan)

    def statistic(x, y, axis=-1):
        denominator = np.mean(y, axis=axis)
        return np.where(denominator > 0, np.mean(x, axis=axis) / np.where(denominator > 0, denominator, 1), np.nan)

    res = bootstrap((a, b), statistic, paired=True, vectorized=True, n_resamples=RESAMPLES,
                    confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    return ratio, float(res.confidence_interval.low), float(res.confidence_interval.high)
