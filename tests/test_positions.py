"""Training-time position samplers: shapes, invariants, and the statistics of many samples."""

import math

import numpy as np
import pytest
import torch

from ropestretch import UsageError
from ropestretch.positions import (SAMPLERS, cream_draw, position_stats, relative_coverage, sample_length,
                                   sample_positions, truncated_gaussian_ratio)


@pytest.mark.parametrize("method", ["cream", "pose", "randpos", "none", "full"])
@pytest.mark.parametrize("window,target", [(4096, 32768), (256, 2048), (300, 1000), (128, 128), (97, 311)])
def test_strictly_increasing_in_range(method, window, target):
    k = {"k": 8} if method == "cream" else {}
    pos = sample_positions(method, 64, window, target, seed=3, **k)
    assert pos.dtype == torch.int64 and pos.shape == (64, sample_length(method, window, target))
    assert (pos.diff(dim=1) > 0).all() and pos.min() >= 0 and pos.max() < target


@pytest.mark.parametrize("method", ["cream", "pose", "randpos"])
def test_seeded_and_reproducible(method):
    a = sample_positions(method, 8, 256, 2048, seed=7)
    assert torch.equal(a, sample_positions(method, 8, 256, 2048, seed=7))
    assert not torch.equal(a, sample_positions(method, 8, 256, 2048, seed=8))


def test_cream_matches_released_code_statistics():
    """docs/methods.md: at N = 4096, L = 32768 the strategy mix is 50/50, head starts at 0, tail ends at
    L-1, and the middle segment's centre has a median of about 0.37 L (5-95%: 0.13-0.74 L)."""
    stats = position_stats("cream", 20000, 4096, 32768, seed=11, coverage_samples=200)
    pos = stats["positions"]
    assert abs(stats["strategy_fraction"]["relativity"] - 0.5) <= 0.02
    assert (pos[:, 0] == 0).all() and (pos[:, -1] == 32767).all()
    assert stats["middle_centre_quantiles"]["q50"] == pytest.approx(0.37, abs=0.01)
    # the tails as masses, not quantiles: the centre's law is spiky there, so its 95% quantile jumps
    draw = cream_draw(20000, 4096, 32768, torch.Generator().manual_seed(11))
    centre = (draw.middle_start + draw.end).double() / 2 / 32768
    assert (centre < 0.13).double().mean().item() == pytest.approx(0.05, abs=0.01)
    assert (centre > 0.74).double().mean().item() == pytest.approx(0.05, abs=0.01)
    # r follows the truncated Gaussian N(9, 3) on [2, 16], floored: P(r = 2) = Phi((3 - 9) / 3)
    ratios = stats["ratio_histogram"]
    assert ratios[2] / 20000 == pytest.approx(0.5 * (1 + math.erf(-2 / math.sqrt(2))), abs=0.004)
    assert set(ratios) == set(range(2, 17))


def test_cream_segments():
    draw = cream_draw(5000, 4096, 32768, torch.Generator().manual_seed(0))
    assert set(draw.k.tolist()) == {4096 // 3, 32}
    pos = draw.positions()
    for row, k, start, end in zip(pos[:200], draw.k, draw.middle_start, draw.end):
        k = int(k)
        assert torch.equal(row[:k], torch.arange(k))
        assert torch.equal(row[-k:], torch.arange(32768 - k, 32768))
        assert torch.equal(row[k:4096 - k], torch.arange(int(start), int(end) + 1))
    # middle end lies in the released code's range [k + (Lm-1) r/2, r N/2 - k - 1]
    lm = 4096 - 2 * draw.k
    assert (draw.end >= torch.floor(draw.k + (lm - 1) * draw.ratio / 2)).all()
    assert (draw.end <= draw.ratio * 2048 - draw.k - 1).all()


def test_cream_ablations():
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert (cream_draw(1000, 4096, 32768, gen(), strategy="continuity").k == 32).all()
    assert (cream_draw(1000, 4096, 32768, gen(), strategy="relativity").k == 1365).all()
    assert (cream_draw(1000, 4096, 32768, gen(), strategy="continuity", k=100).k == 100).all()
    uniform = position_stats("cream", 20000, 4096, 32768, seed=2, middle="uniform", coverage_samples=10)
    gauss = position_stats("cream", 20000, 4096, 32768, seed=2, coverage_samples=10)
    # uniform middle: centre spread evenly over the room between head and tail (median near 0.5 L)
    assert uniform["middle_centre_quantiles"]["q50"] == pytest.approx(0.5, abs=0.02)
    assert uniform["middle_centre_quantiles"]["q95"] > gauss["middle_centre_quantiles"]["q95"]
    # a narrower Gaussian concentrates the middle
    narrow = position_stats("cream", 20000, 4096, 32768, seed=2, sigma=1.0, coverage_samples=10)
    spread = lambda s: s["middle_centre_quantiles"]["q95"] - s["middle_centre_quantiles"]["q05"]  # noqa: E731
    assert spread(narrow) < spread(gauss)
    shifted = position_stats("cream", 5000, 4096, 32768, seed=2, mu=5.0, coverage_samples=10)
    assert shifted["middle_centre_quantiles"]["q50"] < gauss["middle_centre_quantiles"]["q50"]


def test_truncated_gaussian_non_integer_factor():
    u = np.random.default_rng(0).random(50000)
    r = truncated_gaussian_ratio(u, 2.7, 3.7, 3 * 1.7 / 7)
    assert set(np.unique(r)) == {2, 3, 4, 5}  # {2 .. floor(2f)}
    assert np.all(truncated_gaussian_ratio(u[:10], 1.2, 2.2, 0.1) == 2)


def test_pose_statistics():
    pos = sample_positions("pose", 20000, 1000, 8000, seed=4)
    jumps = pos.diff(dim=1) - 1
    l1 = (jumps > 0).int().argmax(dim=1) + 1  # first index after the skip (0 where u == 0)
    skip = pos[:, -1] - 999
    assert (pos[:, 0] == 0).all()
    # skip u uniform on [0, L - N]: mean (L-N)/2, std (L-N)/sqrt(12)
    assert skip.double().mean().item() == pytest.approx(3500, rel=0.02)
    assert skip.double().std().item() == pytest.approx(7000 / math.sqrt(12), rel=0.02)
    has_skip = skip > 0
    # l1 uniform on [1, (N+1)//2 = 500]
    assert l1[has_skip].min() >= 1 and l1[has_skip].max() <= 500
    assert l1[has_skip].double().mean().item() == pytest.approx(250.5, rel=0.02)


def test_randpos_statistics():
    """Sorted uniform N-subset of [0, L): every position equally likely (N/L), order statistics match."""
    window, target = 64, 512
    pos = sample_positions("randpos", 20000, window, target, seed=5)
    counts = np.bincount(pos.numpy().ravel(), minlength=target)
    expected = 20000 * window / target
    assert np.abs(counts - expected).max() < 5 * math.sqrt(expected)
    # j-th smallest of a uniform N-subset of {0..L-1}: mean (j+1)(L+1)/(N+1) - 1
    j = torch.tensor([0, 31, 63])
    means = pos[:, j].double().mean(0).numpy()
    np.testing.assert_allclose(means, (j.numpy() + 1) * (target + 1) / (window + 1) - 1, rtol=0.02)


def test_relative_coverage_by_intervals_matches_brute_force():
    rng = torch.Generator().manual_seed(0)
    for method in ("cream", "pose", "randpos"):
        pos = SAMPLERS[method](5, 40, 300, rng, **({"k": 4} if method == "cream" else {}))
        brute = set()
        for row in pos.tolist():
            brute |= {b - a for i, a in enumerate(row) for b in row[i + 1:]}
        assert relative_coverage(pos, 300) == pytest.approx(len(brute - {0}) / 299)


def test_plain_covers_only_the_window():
    assert relative_coverage(sample_positions("none", 4, 256, 2048), 2048) == pytest.approx(255 / 2047)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="cream", window=4096, target=2048), "at least the window"),
    (dict(method="cream", window=0, target=2048), "positive integer"),
    (dict(method="cream", window=-5, target=2048), "positive integer"),
    (dict(method="cream", window=4096, target=32768, k=2048), "k must be"),
    (dict(method="cream", window=4096, target=32768, k=0), "k must be"),
    (dict(method="cream", window=4096, target=32768, sigma=0), "sigma must be > 0"),
    (dict(method="cream", window=4096, target=32768, sigma=-1.0), "sigma must be > 0"),
    (dict(method="cream", window=4096, target=32768, strategy="both-ish"), "strategy"),
    (dict(method="banana", window=4096, target=32768), "unknown positions method"),
    (dict(method="pose", window=4096, target=32768, k=3), "takes no option"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(UsageError, match=message):
        sample_positions(batch=2, **kwargs)
