"""Two eval runs over the same prompts, compared sample by sample.

A sample's identity is (seed, length, depth or gold position, index), and its result row carries a
fingerprint of the prompt it was asked. Two runs of a test pair up on the samples both hold when
they were scored the same way, share a seed, and every common sample has the same fingerprint;
otherwise :func:`pair_runs` says in one line why they do not. Paired, their differences are given
per length and depth band (:data:`BANDS`): the accuracy difference with McNemar's exact p, and the
answer log-likelihood difference with a paired interval over independent units (a bootstrap, or
Student's t where the units are too few for one: :mod:`ropestretch.stats`).
Perplexity pairs the same way, window by window (:func:`pair_perplexity`): each window's
fingerprint must agree, and the ratio comes with a paired t interval.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ropestretch.stats import mcnemar_exact, paired_interval, paired_ratio, safe_exp

# depth bands in percent (kv: the gold position x 100); both ends of each band included
BANDS: dict[str, tuple[tuple[float, float], ...]] = {
    "all": ((0.0, 100.0),),
    "ends": ((0.0, 10.0), (90.0, 100.0)),
    "middle": ((25.0, 75.0),),
}
BAND_TEXT = {"all": "all", "ends": "0-10, 90-100%", "middle": "25-75%"}


def place(test: str, cell: dict[str, Any]) -> float | None:
    """Where in the context a cell asks, in percent, as its task declares it (the depth, the gold
    position), or None (a task whose cells ask nowhere in particular, or one not registered)."""
    from ropestretch.eval.tasks import TASKS

    return TASKS[test].where(cell) if test in TASKS else None


def _perplexity_task(test: str | None) -> str:
    from ropestretch.eval.tasks import TASKS

    return test or next(name for name, t in TASKS.items() if t.measure == "perplexity")


def in_band(band: str, where: float | None) -> bool:
    if where is None:
        return band == "all"
    return any(low <= where <= high for low, high in BANDS[band])


def per_sample(run: dict[str, Any], test: str) -> dict[tuple, dict[str, Any]] | str:
    """A run's samples of ``test`` keyed by their identity (seed, length, place, index), or why it
    has none. A run may hold rows of several seeds (a study that adds samples with a new seed)."""
    rows = run["results"].get(test) or []
    if not rows:
        return f"`{run['label']}` has no {test} results"
    if any(not isinstance(r.get("samples"), list) for r in rows):
        return f"`{run['label']}` predates per-sample records (rerun it into a new folder to pair it)"  # report.PREDATES
    return {(r.get("seed"), r["cell"]["length"], place(test, r["cell"]), s["i"]): s for r in rows for s in r["samples"]}


@dataclass
class Pairing:
    """The samples two runs share on one test, in the same order for both."""

    test: str
    a: str
    b: str
    keys: list[tuple]
    left: list[dict[str, Any]]
    right: list[dict[str, Any]]
    only_a: int  # samples the other run lacks
    only_b: int


def pair_runs(a: dict[str, Any], b: dict[str, Any], test: str) -> Pairing | str:
    """The paired samples of runs ``a`` and ``b`` on ``test``, or one line saying why they are unpaired."""
    why = f"`{a['label']}` and `{b['label']}` are unpaired on {test}"
    sa, sb = per_sample(a, test), per_sample(b, test)
    for side in (sa, sb):
        if isinstance(side, str):
            return f"{why}: {side}"
    scoring_a, scoring_b = a["args"].get(test, {}).get("scoring"), b["args"].get(test, {}).get("scoring")
    if scoring_a != scoring_b:
        return f"{why}: different scoring ({scoring_a} and {scoring_b})"
    seeds_a, seeds_b = sorted({k[0] for k in sa}), sorted({k[0] for k in sb})
    if set(seeds_a).isdisjoint(seeds_b):
        return f"{why}: different seeds ({', '.join(map(str, seeds_a))} and {', '.join(map(str, seeds_b))})"
    common = sorted(set(sa) & set(sb), key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2], k[3]))
    if not common:
        return f"{why}: no sample in common (other lengths, depths or sample counts)"
    differ = sum(sa[k].get("prompt") != sb[k].get("prompt") for k in common)
    if differ:
        return (f"{why}: their prompts differ at {differ} of {len(common)} common samples (another tokenizer, "
                "prompt form or haystack text)")
    return Pairing(test, a["label"], b["label"], common, [sa[k] for k in common], [sb[k] for k in common],
                   len(sa) - len(common), len(sb) - len(common))


def per_token(sample: dict[str, Any]) -> float:
    return float(sample["logprob"]) / max(1, int(sample["tokens"]))


def differences(p: Pairing) -> list[dict[str, Any]]:
    """Per length, then per band that holds samples: n pairs, both accuracies, the discordant
    counts with McNemar's exact p, and the mean difference of per-token answer log-likelihood
    (a - b) with its 95% interval over independent units (:func:`ropestretch.stats.paired_interval`:
    a paired bootstrap from 20 units on, the paired t interval below; ``method`` says which). For
    the needle, one draw (its haystack, key and number) placed at every depth is one unit, its
    depths' differences averaged; for the other tests every sample is drawn on its own."""
    from ropestretch.eval.tasks import TASKS

    task = TASKS.get(p.test)
    out = []
    bands = ("all", "ends", "middle") if task is not None and task.place is not None else ("all",)
    by_draw = task is not None and task.unit == "draw"
    for length in sorted({k[1] for k in p.keys}):
        for band in bands:
            idx = [j for j, k in enumerate(p.keys) if k[1] == length and in_band(band, k[2])]
            if not idx or (band != "all" and len(idx) == sum(k[1] == length for k in p.keys)):
                continue  # an empty band, or one that holds every sample of the length (as "all" does)
            ra = [bool(p.left[j]["correct"]) for j in idx]
            rb = [bool(p.right[j]["correct"]) for j in idx]
            only_a, only_b, pvalue = mcnemar_exact(ra, rb)
            units: dict[tuple, list[int]] = {}
            for j in idx:
                seed, _, where, i = p.keys[j]
                units.setdefault((seed, i) if by_draw else (seed, where, i), []).append(j)
            unit_a = [sum(per_token(p.left[j]) for j in js) / len(js) for js in units.values()]
            unit_b = [sum(per_token(p.right[j]) for j in js) / len(js) for js in units.values()]
            diff, low, high, method = paired_interval(unit_a, unit_b)
            out.append({"length": length, "band": band, "n": len(idx), "units": len(units),
                        "acc_a": sum(ra) / len(idx), "acc_b": sum(rb) / len(idx), "only_a": only_a, "only_b": only_b,
                        "p": pvalue, "loglik_diff": diff, "low": low, "high": high, "method": method})
    return out


def prints_match(prints: Any, windows: Any) -> bool:
    """Whether a perplexity row's ``prints`` give one fingerprint (a string) per window."""
    return (isinstance(prints, list) and isinstance(windows, list) and len(prints) == len(windows)
            and all(isinstance(x, str) for x in prints))


def _windows(run: dict[str, Any], length: int, test: str) -> dict[tuple, float] | str:
    """A run's scored windows at ``length`` over all its rows there, keyed by (fingerprint, its
    occurrence), or why it has none that can pair."""
    out: dict[tuple, float] = {}
    seen: Counter = Counter()
    for row in run["results"].get(test) or []:
        if row["cell"]["length"] != length:
            continue
        windows, prints = row.get("windows"), row.get("prints")
        if not windows:
            return f"`{run['label']}` kept no per-window records at {length} (sliding mode, or an older run)"
        if not prints:
            return f"`{run['label']}` predates window fingerprints at {length} (rerun it into a new folder to pair it)"
        if not prints_match(prints, windows):
            return f"`{run['label']}` has no fingerprint for each window at {length}"
        for fp, w in zip(prints, windows):
            out[(fp, seen[fp])] = float(w)
            seen[fp] += 1
    return out


def pair_perplexity(a: dict[str, Any], b: dict[str, Any], test: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Per length both runs scored, the perplexity ratio ``a / b`` over the windows both scored
    (the same fingerprints, whichever rows or seeds hold them): exp of the mean per-window NLL
    difference with its 95% paired t interval, as {length, n, ppl_a, ppl_b, ratio, low, high}; and
    a line for each length (or the whole pair) that does not pair, saying why. ``test``: the
    perplexity task (default: the registry's first)."""
    test = _perplexity_task(test)
    why = f"`{a['label']}` and `{b['label']}` are unpaired on perplexity"
    lengths = [{r["cell"]["length"] for r in run["results"].get(test) or []} for run in (a, b)]
    common = sorted(lengths[0] & lengths[1])
    if not common:
        return [], [f"{why}: no length in common"]
    rows, unpaired = [], []
    for length in common:
        wa, wb = _windows(a, length, test), _windows(b, length, test)
        problem = next((w for w in (wa, wb) if isinstance(w, str)), None)
        keys = [] if problem else [k for k in wa if k in wb]
        if problem or not keys:
            unpaired.append(f"{why} at {length}: " + (problem or "no window in common (another text, tokenizer or seed)"))
            continue
        xa, xb = [wa[k] for k in keys], [wb[k] for k in keys]
        ratio, low, high = paired_ratio(xa, xb)
        rows.append({"length": length, "n": len(keys), "ppl_a": safe_exp(sum(xa) / len(xa)),
                     "ppl_b": safe_exp(sum(xb) / len(xb)), "ratio": ratio, "low": low, "high": high})
    return rows, unpaired
