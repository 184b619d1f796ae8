"""Statistics in reports: the intervals and tests against their textbook formulas and against
simulation, and `ropestretch report` pairing runs over the same prompts, or saying why it cannot."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from clihelp import assert_one_line_error, run_cli
from ropestretch.stats import mcnemar_exact, mean_interval, paired_bootstrap, paired_ratio, wilson

REPO = Path(__file__).resolve().parents[1]

Z = 1.959963984540054  # the 97.5% normal quantile


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 7), (18, 20), (1, 1), (40, 100)])
def test_wilson_is_the_score_interval(k, n):
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_wilson_covers_at_its_level():
    """Over many simulated 20-sample cells the 95% interval holds the true rate about 95% of the time."""
    rng = np.random.default_rng(0)
    for rate in (0.3, 0.85):
        hits = [lo <= rate <= hi for lo, hi in (wilson(int(rng.binomial(20, rate)), 20) for _ in range(2000))]
        assert 0.92 <= np.mean(hits) <= 0.99


def test_mcnemar_exact_counts_only_discordant_pairs():
    a = [True] * 30 + [True] * 1 + [False] * 9 + [False] * 5
    b = [True] * 30 + [False] * 1 + [True] * 9 + [False] * 5
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == (1, 9)
    assert p == pytest.approx(2 * (1 + 10) / 2**10)  # two-sided binomial tail at 1/2 of 1 in 10
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])


def test_mean_interval_is_students_t():
    x = [-1.2, -0.4, -0.9, -0.1, -0.7]
    mean, low, high = mean_interval(x)
    half = 2.7764451051977987 * np.std(x, ddof=1) / math.sqrt(len(x))  # t(0.975, 4)
    assert (mean, low, high) == pytest.approx((np.mean(x), np.mean(x) - half, np.mean(x) + half))
    assert math.isnan(mean_interval([0.5])[1]) and mean_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_paired_ratio_is_scipys_paired_t_interval_exponentiated():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(3)
    hard = rng.normal(2.3, 0.3, 12)  # each window's difficulty, shared by both models
    a, b = hard + 0.05 + rng.normal(0, 0.01, 12), hard + rng.normal(0, 0.01, 12)
    ratio, low, high = paired_ratio(a, b)
    ci = ttest_rel(a, b).confidence_interval(0.95)
    assert (ratio, low, high) == pytest.approx((math.exp(np.mean(a - b)), math.exp(ci.low), math.exp(ci.high)))
    assert low < math.exp(0.05) < high and high / low < 1.03  # the windows' spread (0.3) cancels
    _, plain_low, plain_high = mean_interval(a)
    assert plain_high - plain_low > 10 * math.log(high / low)
    with pytest.raises(ValueError, match="differ in length"):
        paired_ratio([1.0, 2.0], [1.0])


def _ppl_run(label, *rows):
    return {"label": label, "results": {"ppl": [{"test": "ppl", "cell": {"length": n}, "ppl": 9.0, "windows": w,
                                                 **({"prints": p} if p is not None else {})} for n, w, p in rows]}}


def test_perplexity_pairs_by_window_fingerprint_length_by_length():
    from ropestretch.compare import pair_perplexity
    from ropestretch.report import ratio_text

    s0, s1 = ["p0", "p1", "p2", "p3"], ["q0", "q1", "q2", "q3"]
    a = _ppl_run("a", (4096, [2.0, 2.4, 2.2, 2.6], s0), (4096, [2.1, 2.3, 2.5, 2.2], s1),
                 (32768, [3.0, 3.1], ["r0", "r1"]), (8192, [2.0, 2.1], ["t0", "t1"]))
    b = _ppl_run("b", (4096, [2.5, 2.0, 2.4, 2.2], list(reversed(s0))), (32768, [3.2, 3.3], None),
                 (8192, [2.0, 2.1], ["u0", "u1"]))
    paired, unpaired = pair_perplexity(a, b)
    # 4096: a's second seed has no counterpart; the four s0 windows pair by fingerprint, whatever their order
    [d] = paired
    assert (d["length"], d["n"]) == (4096, 4)
    assert d["ratio"] == pytest.approx(math.exp(np.mean(np.array([2.0, 2.4, 2.2, 2.6]) - [2.2, 2.4, 2.0, 2.5])))
    assert unpaired == ["`a` and `b` are unpaired on perplexity at 8192: no window in common (another text, tokenizer "
                        "or seed)",
                        "`a` and `b` are unpaired on perplexity at 32768: `b` predates window fingerprints at 32768 "
                        "(rerun it into a new folder to pair it)"]
    assert pair_perplexity(a, _ppl_run("c", (1024, [1.0, 1.0], ["x", "y"]))) == (
        [], ["`a` and `c` are unpaired on perplexity: no length in common"])
    short = _ppl_run("d", (4096, [2.0, 2.0], ["p0"]))  # one fingerprint for two windows: not trusted
    assert "has no fingerprint for each window" in pair_perplexity(a, short)[1][0]
    # what a diverged or hand-edited NLL gives is a '-' or an open interval, never an OverflowError
    huge = pair_perplexity(_ppl_run("e", (64, [800.0, 800.0], ["w0", "w1"])), _ppl_run("f", (64, [1.0, 1.0], ["w0", "w1"])))
    assert ratio_text(huge[0][0]) == "-" and math.isinf(huge[0][0]["ppl_a"])
    wide = pair_perplexity(_ppl_run("g", (64, [3.0, 120.0], ["w0", "w1"])), _ppl_run("h", (64, [3.0, 3.0], ["w0", "w1"])))
    assert ratio_text(wide[0][0]).startswith("x") and "[" not in ratio_text(wide[0][0])  # its upper bound overflows
    nan = pair_perplexity(_ppl_run("i", (64, [float("nan"), 2.0], ["w0", "w1"])), _ppl_run("j", (64, [2.0, 2.0], ["w0", "w1"])))
    assert ratio_text(nan[0][0]) == "-"


def test_paired_bootstrap_cancels_what_pairs_share():
    """A 0.1 shift under a shared spread ten times larger: the paired interval finds it, one
    computed as if unpaired would not; and it covers the true shift at about its level."""
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 1.0, 40)
    a, b = shared + 0.1 + rng.normal(0, 0.05, 40), shared + rng.normal(0, 0.05, 40)
    diff, low, high = paired_bootstrap(a, b)
    assert diff == pytest.approx(np.mean(a - b)) and 0 < low < 0.1 < high < 0.2
    unpaired_half = Z * math.sqrt(a.var(ddof=1) / 40 + b.var(ddof=1) / 40)
    assert unpaired_half > 0.4
    covered = 0
    for seed in range(200):
        r = np.random.default_rng(100 + seed)
        s = r.normal(0, 1, 30)
        _, lo, hi = paired_bootstrap(s + 0.3 + r.normal(0, 0.2, 30), s + r.normal(0, 0.2, 30), seed=seed)
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99
    assert math.isnan(paired_bootstrap([1.0], [0.0])[1]) and paired_bootstrap([1.0, 2.0], [0.0, 1.0]) == (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny base and its YaRN x4 export, passkey over the same seed; and runs that cannot pair."""
    root = tmp_path_factory.mktemp("runs")
    base = REPO / "models" / "tiny-llama-256"
    assert run_cli("apply", "--model", base, "--scaling", "yarn", "--target", 1024, "--out", root / "yarn-x4")[0] == 0
    common = ["--lengths", "256,512", "--depths", "0,50,100", "--samples", 4, "--prompt", "legacy", "--no-progress"]
    for name, model, extra in (("base", base, []), ("yarn", root / "yarn-x4", []), ("seed1", base, ["--seed", 1])):
        code, out, err = run_cli("eval", "passkey", "--model", model, "--out", root / name, *common, *extra)
        assert code == 0, err
        code, out, err = run_cli("eval", "ppl", "--model", model, "--out", root / name, "--lengths", "256,512",
                                 "--samples", 4, "--no-progress", *extra)
        assert code == 0, err
    return root


def test_report_pairs_runs_over_the_same_prompts(runs):
    code, out, err = run_cli("report", runs / "base", runs / "yarn", "--out", runs / "report")
    assert code == 0, err
    report = (runs / "report" / "report.md").read_text()
    assert re.search(r"\| base \| \d+% \[\d+-\d+\], n = 12 \| \d+% \[\d+-\d+\], n = 12 \|", report)
    assert re.search(r"\| yarn \| -\d\.\d\d \[-\d\.\d\d, -?\d\.\d\d\], n = 12 \|", report)  # answer log-likelihood
    assert "### Passkey retrieval: `base` - `yarn`, 24 paired samples" in report
    rows = re.findall(r"^\| (256|512) \| (all|0-10, 90-100%|25-75%) \| (\d+) \(\3\) \| (\d+)% \| (\d+)% \| .* \| "
                      r"(\d+) / (\d+) \| ([\d.e+-]+) \| ([+-]\d\.\d+) \[([+-]\d\.\d+), ([+-]\d\.\d+)\] \(t\) \|$",
                      report, re.M)  # 12, 8 and 4 independent samples: Student's t, marked
    assert [(r[0], r[1], r[2]) for r in rows] == [("256", "all", "12"), ("256", "0-10, 90-100%", "8"), ("256", "25-75%", "4"),
                                                  ("512", "all", "12"), ("512", "0-10, 90-100%", "8"), ("512", "25-75%", "4")]
    # recompute one row from the run folders' samples: the same discordant counts and p
    a = [s for line in (runs / "base" / "results.jsonl").read_text().splitlines()
         for s in json.loads(line).get("samples", []) if json.loads(line)["cell"]["length"] == 256]
    b = [s for line in (runs / "yarn" / "results.jsonl").read_text().splitlines()
         for s in json.loads(line).get("samples", []) if json.loads(line)["cell"]["length"] == 256]
    assert [s["prompt"] for s in a] == [s["prompt"] for s in b]
    only_a, only_b, p = mcnemar_exact([s["correct"] for s in a], [s["correct"] for s in b])
    assert (rows[0][5], rows[0][6]) == (str(only_a), str(only_b)) and float(rows[0][7]) == pytest.approx(p, rel=1e-2)
    assert only_a > only_b  # the base inside its own window beats YaRN x4 there, as the demo measures
    assert (runs / "report" / "passkey-by-depth.png").read_bytes()[:4] == b"\x89PNG"
    # perplexity, window by window: the ratio recomputed from both folders' per-window NLL
    assert "### Perplexity: `base` / `yarn`, the same windows" in report
    ppl = {name: {json.loads(line)["cell"]["length"]: json.loads(line) for line in
                  (runs / name / "results.jsonl").read_text().splitlines() if json.loads(line)["test"] == "ppl"}
           for name in ("base", "yarn")}
    for length in (256, 512):
        a, b = ppl["base"][length], ppl["yarn"][length]
        assert a["prints"] == b["prints"] and len(set(a["prints"])) == 4  # four windows, the same in both
        d = np.array(a["windows"]) - np.array(b["windows"])
        half = 3.182446 * d.std(ddof=1) / 2  # t(0.975, 3) * sd / sqrt(4)
        assert (f"| {length} | 4 | {a['ppl']:.2f} | {b['ppl']:.2f} | x{math.exp(d.mean()):.3f} "
                f"[{math.exp(d.mean() - half):.3f}-{math.exp(d.mean() + half):.3f}] |") in report
    assert math.exp(np.mean(ppl["base"][256]["windows"])) < math.exp(np.mean(ppl["yarn"][256]["windows"]))
    assert "McNemar" in out and "n = 12" in out  # the command prints what it wrote


def test_runs_that_do_not_share_prompts_are_unpaired_in_one_line(runs, tiny_lm_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(REPO / "evals" / "tiny-llama-256", old)  # a run folder from before per-sample records
    other_tok = tmp_path / "other"
    assert run_cli("eval", "passkey", "--model", tiny_lm_dir, "--out", other_tok, "--lengths", "256,512",
                   "--depths", "0,50,100", "--samples", 4, "--prompt", "legacy", "--no-progress")[0] == 0
    depths = tmp_path / "depths"
    assert run_cli("eval", "passkey", "--model", REPO / "models" / "tiny-llama-256", "--out", depths, "--lengths", "256",
                   "--depths", "25", "--samples", 4, "--prompt", "legacy", "--no-progress")[0] == 0
    code, out, err = run_cli("report", runs / "base", runs / "seed1", old, other_tok, depths, "--out", tmp_path / "rep")
    assert code == 0, err
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "- Unpaired on passkey (different seeds (0 and 1)): `base` - `seed1`" in report
    assert "- Unpaired on passkey: `old` predates per-sample records (rerun into a new folder to pair)." in report
    assert "- Unpaired on passkey (their prompts differ at 24 of 24 common samples" in report
    assert "- Unpaired on passkey (no sample in common (other lengths, depths or sample counts)): `base` - `depths`" \
        in report
    assert ("- Unpaired on ppl: no window in common (another text, tokenizer or seed) (`base` and `seed1` at 256"
            in report)
    assert report.count("- Unpaired on ppl: `old` kept no per-window records at 256 (sliding mode, or an older run).") == 1
    assert "| old | 100% [96-100], n = 100 |" in report  # the old folder still reports, with intervals
    assert "### " not in report.split("## Paired comparisons")[1]  # nothing compared as if paired


def test_eval_records_its_dtype_and_refuses_another(tmp_path, capfd, cpu_bf16):
    from ropestretch.hardware import resolve_dtype

    run = tmp_path / "run"
    base = REPO / "models" / "tiny-llama-256"
    common = ["--model", base, "--out", run, "--lengths", 256, "--samples", 1, "--no-progress"]
    assert run_cli("eval", "ppl", *common)[0] == 0
    recorded = json.loads((run / "eval-args.json").read_text())["ppl"]["dtype"]
    assert recorded == resolve_dtype("auto", "cpu") == ("bf16" if cpu_bf16 else "fp32")
    other = "fp32" if recorded == "bf16" else "bf16"
    assert_one_line_error(run_cli("eval", "ppl", *common, "--dtype", other), "different arguments (differs in: dtype)")


def test_the_bf16_probe_can_be_overridden_to_reproduce_another_cpu_kind(monkeypatch):
    import torch

    from ropestretch import hardware

    monkeypatch.setenv(hardware.PROBE_ENV, "1")
    assert hardware.cpu_bf16() and hardware.resolve_dtype("auto", "cpu") == "bf16"
    monkeypatch.setenv(hardware.PROBE_ENV, "0")
    assert not hardware.cpu_bf16() and hardware.resolve_dtype("auto", "cpu") == "fp32"
    monkeypatch.delenv(hardware.PROBE_ENV)  # torch's own answer for this CPU
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert hardware.cpu_bf16() == native


def test_auto_dtype_follows_the_cpu_and_emulated_bf16_warns(monkeypatch, capsys):
    from ropestretch import hardware

    monkeypatch.setattr(hardware, "cpu_bf16", lambda: True)
    assert hardware.resolve_dtype("auto", "cpu") == "bf16" and hardware.resolve_dtype("bf16", "cpu") == "bf16"
    hardware.warn_if_emulated(hardware.placement("cpu", "bf16"))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(hardware, "cpu_bf16", lambda: False)
    assert hardware.resolve_dtype("auto", "cpu") == "fp32"
    where = hardware.placement("cpu", "bf16")  # it runs, with one warning line as the model loads
    assert where.dtype == "bf16" and capsys.readouterr().err == ""
    hardware.warn_if_emulated(where)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "emulates bf16" in err and "fp32 will be faster" in err


def test_bf16_agrees_with_fp32_on_the_tiny_model():
    """The shipped tiny base on its own text, bf16 against fp32: perplexity within 1% and the same
    next token at 97% of positions or more (bf16 keeps 8 bits of mantissa)."""
    import torch

    from ropestretch.data import builtin_documents
    from ropestretch.eval import load_for_eval
    from ropestretch.hardware import Placement

    base = str(REPO / "models" / "tiny-llama-256")
    m32, tok = load_for_eval(base)
    m16, _ = load_for_eval(base, placement=Placement("cpu", "bf16"))
    ids = torch.tensor([tok(builtin_documents(max_docs=60)[50], add_special_tokens=False)["input_ids"][:256]])
    with torch.no_grad():
        l32, l16 = m32(input_ids=ids).logits[0, :-1].float(), m16(input_ids=ids).logits[0, :-1].float()
    target = ids[0, 1:]
    ppl32 = math.exp(torch.nn.functional.cross_entropy(l32, target))
    ppl16 = math.exp(torch.nn.functional.cross_entropy(l16, target))
    assert abs(ppl16 / ppl32 - 1) < 0.01
    assert (l16.argmax(-1) == l32.argmax(-1)).float().mean() >= 0.97


def test_needle_draws_are_the_bootstrap_units():
    """A needle draw placed at three depths is one unit: the interval is over 4 draws, not 12 samples."""
    from ropestretch.compare import Pairing, differences

    keys = [(0, 512, d, i) for i in range(4) for d in (25.0, 50.0, 75.0)]
    left = [{"correct": True, "logprob": -1.0 - i, "tokens": 1} for (_, _, _, i) in keys]
    right = [{"correct": i % 2 == 0, "logprob": -2.0 - i, "tokens": 1} for (_, _, _, i) in keys]
    needle = differences(Pairing("needle", "a", "b", keys, left, right, 0, 0))
    passkey = differences(Pairing("passkey", "a", "b", keys, left, right, 0, 0))
    assert [(d["band"], d["n"], d["units"]) for d in needle] == [("all", 12, 4)]  # middle = all here: one row
    assert passkey[0]["units"] == 12 and needle[0]["loglik_diff"] == pytest.approx(1.0)
    assert (needle[0]["only_a"], needle[0]["only_b"]) == (6, 0)
    # 4 draws are too few for a bootstrap: Student's t over the draws, each of which differs by exactly 1
    assert needle[0]["method"] == "t" and (needle[0]["low"], needle[0]["high"]) == (1.0, 1.0)


def test_paired_interval_covers_where_a_bootstrap_over_few_units_does_not(monkeypatch):
    """Over 4 independent pairs a percentile bootstrap covers about 80% for its 95%; the interval the
    report prints there (Student's t) covers about 95%. From 20 pairs on the report's is the bootstrap."""
    from ropestretch import stats as st

    monkeypatch.setattr(st, "RESAMPLES", 1999)
    hits = {"bootstrap": 0, "reported": 0}
    for seed in range(300):
        d = np.random.default_rng(2000 + seed).normal(0.3, 1.0, 4)
        _, low, high = st.paired_bootstrap(d, np.zeros(4), seed=seed)
        hits["bootstrap"] += low <= 0.3 <= high
        _, low, high, method = st.paired_interval(d, np.zeros(4), seed=seed)
        hits["reported"] += low <= 0.3 <= high and method == "t"
    assert hits["bootstrap"] / 300 < 0.88 and 0.91 <= hits["reported"] / 300 <= 0.98
    a = np.random.default_rng(5).normal(0, 1, st.BOOTSTRAP_MIN_PAIRS)
    assert st.paired_interval(a, a * 0)[3] == "bootstrap" and st.paired_interval(a[:-1], a[:-1] * 0)[3] == "t"
    assert st.paired_interval(a, a * 0)[:3] == st.paired_bootstrap(a, a * 0)
