"""The demo's ``report.md``: the comparison table (retrieval at L and at the window, the middle
depths, perplexity, training cost) above the figures and tables of ``ropestretch report``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from ropestretch.demo.plan import DemoPlan


def write_demo_report(out: Path, plan: DemoPlan, runs: list[Path]) -> Path:
    from ropestretch.report import write_report

    report = write_report(runs, out)
    summary = summary_table(out, plan, [r.name for r in runs])
    text = report.read_text()
    report.write_text(text.replace("# ropestretch report\n", "# ropestretch demo report\n\n" + summary, 1))
    return report


def summary_table(out: Path, plan: DemoPlan, names: list[str]) -> str:
    """The comparison: retrieval at L and at the window, middle depths, perplexity, training cost."""
    from ropestretch.eval.store import read_results

    n, target = plan.window, plan.target
    tail = plan.tail
    counts = [f"{plan.tail_samples[t]} {t} samples per cell instead of {plan.samples[t]}" for t in plan.tail_samples
              if plan.tail_samples[t] != plan.samples[t]]
    beyond = f" Beyond L ({', '.join(map(str, tail))}): {', '.join(counts)}." if tail and counts else ""
    options = "; ".join(f"{name} with " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in opts.items())
                        for name, opts in plan.scaling_options.items() if opts)
    beyond += f" Scaling options, for every variant of that scaling: {options}." if options else ""
    if plan.distill:
        beyond += (f" The variants fine-tuned inside the window add short-to-long distillation from the base "
                   f"(weight {plan.distill:g}); the full-length one cannot (the base does not read {target} tokens).")
    header = ["variant", f"passkey @{target}", f"needle @{target}", f"needle 25-75% @{target}",
              f"lines @{target}", f"kv @{target}", f"passkey @{n}", f"ppl @{n}", f"ppl @{target}",
              *[f"ppl @{t}" for t in tail], "train time"]
    lines = ["## Comparison", "", f"Base window N = {n}, target L = {target} (8x); every fine-tuned variant saw "
             f"{plan.budget:,} training tokens. Accuracy is the mean over depths (needle, passkey) or gold "
             "positions (kv)." + beyond, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        rows = list(read_results(out / "evals" / name))
        acc = functools.partial(_accuracy, rows)
        ppl = functools.partial(_perplexity, rows)

        meta_path = out / "models" / name / "ropestretch.json"
        seconds = json.loads(meta_path.read_text()).get("train_seconds") if meta_path.is_file() else None
        cost = f"{seconds:.0f} s" if seconds is not None else "-"
        lines.append("| " + " | ".join([name, acc("passkey", target), acc("needle", target),
                                        acc("needle", target, 25, 75), acc("lines", target), acc("kv", target),
                                        acc("passkey", n), ppl(n), ppl(target), *[ppl(t) for t in tail],
                                        cost]) + " |")
    return "\n".join(lines) + "\n\n"


def _accuracy(rows: list[dict], test: str, length: int, lo: float = 0, hi: float = 100) -> str:
    vals = [r["accuracy"] for r in rows if r["test"] == test and r["cell"]["length"] == length
            and lo <= r["cell"].get("depth", 50) <= hi]
    return f"{100 * np.mean(vals):.0f}%" if vals else "-"


def _perplexity(rows: list[dict], length: int) -> str:
    vals = [r["ppl"] for r in rows if r["test"] == "ppl" and r["cell"]["length"] == length]
    return f"{vals[0]:.1f}" if vals else "-"
