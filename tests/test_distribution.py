"""DPRoPE's rotary-angle distributions, disturbance and selection (docs/methods.md, DPRoPE)."""

import math

import pytest
import torch

from conftest import LLAMA2_CONFIG
from ropestretch import UsageError
from ropestretch.rope import (angle_distribution, base_inv_freq, disturbance, dprope_choice, load_rope_config,
                              method_disturbance, scale, select)


def naive_distribution(inv_freq, n, bins):
    """The released code's recipe written as plain loops over float32 scalars."""
    out = []
    for theta in inv_freq.tolist():
        counts = [2.0 ** -14] * bins
        th = torch.tensor(theta, dtype=torch.float32)
        for m in range(n):
            angle = torch.remainder(torch.tensor(m) * th, 2 * math.pi)
            counts[int(torch.floor((bins / (2 * math.pi)) * angle))] += 1
        out.append([c / n for c in counts])
    return torch.tensor(out, dtype=torch.float64)


def test_histogram_matches_naive_recipe():
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    fast = angle_distribution(inv_freq, 300, bins=36).double()
    torch.testing.assert_close(fast, naive_distribution(inv_freq, 300, 36), rtol=1e-6, atol=1e-9)


def test_histogram_mass_and_floor():
    inv_freq = base_inv_freq(load_rope_config(LLAMA2_CONFIG))
    dist = angle_distribution(inv_freq, 4096, 360).double()
    # every position counted once per pair; plus the 2^-14 floor in each bin
    torch.testing.assert_close(dist.sum(1), torch.full((64,), 1 + 360 * 2**-14 / 4096, dtype=torch.float64))
    # the slowest pair turns 4096 * 1e-4 rad ~ 0.41 rad: only the first bins are hit
    assert (dist[-1] * 4096 > 1).sum() == math.ceil(4096 * float(inv_freq[-1]) / (2 * math.pi / 360))


def test_kl_direction_and_zero():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    q = torch.tensor([[0.25, 0.25, 0.5]])
    assert disturbance(p, p).item() == 0
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert disturbance(p, q).item() == pytest.approx(expected)
    assert disturbance(p, q, reverse=True).item() == pytest.approx(0.25 * math.log(0.5) + 0.5 * math.log(2))
    q2 = torch.tensor([[0.7, 0.2, 0.1]])
    assert disturbance(p, q2).item() != pytest.approx(disturbance(p, q2, reverse=True).item())


@pytest.mark.parametrize("target,paper_reduction", [(8192, 0.72), (16384, 0.32)])
def test_llama2_disturbance_reduction_matches_paper(target, paper_reduction):
    """The paper (arXiv 2410.01490, abstract and Table 3): DPRoPE reduces the disturbance of PI by
    up to 72% at 8k and 32% at 16k for Llama 2."""
    rope = load_rope_config(LLAMA2_CONFIG)
    pi = method_disturbance(scale(rope, "linear", target))
    ours = method_disturbance(scale(rope, "dprope", target))
    assert 1 - ours / pi == pytest.approx(paper_reduction, abs=0.005)


def test_llama2_table_values():
    """Pinned values of the README's table (float32 angles, 360 bins): a regression guard."""
    rope = load_rope_config(LLAMA2_CONFIG)
    expected = {8192: {"linear": 0.024080, "yarn": 0.025623, "dprope": 0.006714},
                16384: {"linear": 0.033676, "yarn": 0.035445, "dprope": 0.022930}}
    for target, row in expected.items():
        for name, value in row.items():
            assert method_disturbance(scale(rope, name, target)) == pytest.approx(value, rel=1e-3), (target, name)


def test_dprope_choice_is_per_pair_minimum():
    rope = load_rope_config(LLAMA2_CONFIG)
    choice = dprope_choice(rope, 8192)
    assert torch.equal(choice.chosen, torch.minimum(choice.extrapolation, choice.interpolation))
    # the lowest frequencies never complete a turn in the window: extrapolating them is out of distribution
    assert choice.interpolate[-10:].all()
    assert method_disturbance(scale(rope, "dprope", 8192)) <= method_disturbance(scale(rope, "linear", 8192))


@pytest.mark.parametrize("n_hat", [0, 64, 80, 128])
def test_select_by_n_hat_agrees_with_threshold(n_hat):
    rope = load_rope_config(LLAMA2_CONFIG)
    choice = dprope_choice(rope, 8192, n_hat=n_hat)
    assert choice.n_hat == n_hat
    again, _ = select(choice.extrapolation, choice.interpolation, threshold=choice.threshold)
    assert torch.equal(again, choice.interpolate)


def test_threshold_moves_toward_extrapolation():
    rope = load_rope_config(LLAMA2_CONFIG)
    counts = [dprope_choice(rope, 8192, threshold=t).n_hat for t in (-0.01, 0.0, 0.01, 0.1)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


@pytest.mark.parametrize("kwargs,message", [
    ({"bins": 1}, "bins"),
    ({"threshold": 0.1, "n_hat": 8}, "not both"),
    ({"n_hat": 130}, "0..128"),
    ({"n_hat": -2}, "0..128"),
    ({"n_hat": 7}, "even"),
])
def test_bad_dprope_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        dprope_choice(load_rope_config(LLAMA2_CONFIG), 8192, **kwargs)
