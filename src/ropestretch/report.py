"""``report.md`` and figures from one or more eval run folders: a table per test with each rate's
95% interval and its n, the answer log-likelihood, the needle heatmap (depth x length), accuracy by
depth and by gold position with interval bars, perplexity vs length with a line per model, and,
for two or more runs over the same prompts, their paired differences (:mod:`ropestretch.compare`)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ropestretch.compare import BAND_TEXT, differences, pair_perplexity, pair_runs, per_token, prints_match
from ropestretch.errors import UsageError
from ropestretch.eval.store import ARGS_FILE, RESULTS_FILE, read_results
from ropestretch.stats import BOOTSTRAP_MIN_PAIRS, mean_interval, safe_exp, wilson



RULER_THRESHOLD = 85.6  # RULER's effective-length threshold: Llama-2-7B-chat's score at 4K
NOLIMA_SHARE = 0.85  # NoLiMa's: 85% of the model's own score at its shortest length


def _tasks(measure: str) -> list:
    """The registered tasks of one measure (``retrieval`` or ``perplexity``), in registry order."""
    from ropestretch.eval.tasks import TASKS

    return [t for t in TASKS.values() if t.measure == measure]


def load_run(folder: str | Path) -> dict[str, Any]:
    """A run folder's arguments, results and (for a ropestretch checkpoint) its model's record, every
    row checked before any is reported: a hand-edited or damaged line is one error naming it."""
    from ropestretch.jsonl import read_json

    folder = Path(folder)
    if not (folder / ARGS_FILE).is_file():
        raise UsageError(f"{folder} is not an eval run folder (no {ARGS_FILE})")
    args = read_json(folder / ARGS_FILE, "a ropestretch run record")
    if not isinstance(args, dict) or not all(isinstance(v, dict) for v in args.values()):
        raise UsageError(f"{folder / ARGS_FILE} is not a ropestretch run record")
    results: dict[str, list[dict]] = defaultdict(list)
    for number, row in enumerate(read_results(folder), 1):
        problem = row_problem(row)
        if problem:
            raise UsageError(f"{folder / RESULTS_FILE}: line {number} {problem}")
        results[row["test"]].append(row)
    model = next((a.get("model") for a in args.values() if a.get("model")), None)
    meta: dict[str, Any] = {}
    if model is not None and not isinstance(model, str):
        raise UsageError(f"{folder / ARGS_FILE}: model must be a path or name, got {model!r}")
    where = (folder / model) if model and not Path(model).is_absolute() else Path(model or ".")
    if model and (where / "ropestretch.json").is_file():  # run records keep paths relative to the run folder
        meta = read_json(where / "ropestretch.json", "a ropestretch model record")
        if not isinstance(meta, dict) or (meta.get("train_seconds") is not None and not all(
                _number(meta.get(k)) for k in ("train_seconds", "window", "target"))):
            raise UsageError(f"{where / 'ropestretch.json'} is not a ropestretch model record")
    return {"folder": folder, "label": folder.name, "args": args, "results": dict(results), "meta": meta}


def _number(x: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and low <= x <= high


def _count(x: Any, low: int = 0) -> bool:
    return not isinstance(x, bool) and isinstance(x, int) and x >= low


def row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a result row for the report to use it, or None."""
    from ropestretch.eval.tasks import TASKS

    test, cell = row["test"], row["cell"]
    if not _count(cell.get("length"), 1):
        return "has no cell length (a positive integer)"
    task = TASKS.get(test)
    if task is None:
        return None  # another test's row: not reported, not in the way
    if task.measure == "perplexity":
        value = row.get("ppl")  # NaN or infinity: a run that overflowed, reported as "-"
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (math.isnan(value) or value > 0)
        windows = row.get("windows")  # a window that overflowed is NaN or infinity, as the perplexity
        if ok and windows is not None and not (isinstance(windows, list) and windows and all(
                not isinstance(w, bool) and isinstance(w, (int, float)) and not w < 0 for w in windows)):
            return "has windows that are not a list of per-token NLLs (non-negative numbers)"
        prints = row.get("prints")
        if ok and prints is not None and not prints_match(prints, windows):
            return "has prints that are not one fingerprint (a string) per window"
        return None if ok else "has no perplexity (a positive number)"
    if task.place is not None and not _number(cell.get(task.place.key), 0, 100 / task.place.percent):
        return f"has no {task.place.plural[:-1]} in [0, {100 / task.place.percent:g}]"
    if not (_number(row.get("accuracy"), 0, 1) and _count(row.get("correct")) and _count(row.get("n"), 1)
            and row["correct"] <= row["n"]):
        return "needs accuracy (0 to 1), correct and n (counts, correct <= n)"
    if row.get("seed") is not None and not _count(row["seed"]):
        return "has a seed that is not a non-negative integer"
    samples = row.get("samples")
    if samples is not None and not (isinstance(samples, list) and len(samples) == row["n"] and all(
            isinstance(x, dict) and _count(x.get("i")) and isinstance(x.get("correct"), bool)
            and _number(x.get("logprob")) and _count(x.get("tokens"), 1) and isinstance(x.get("prompt"), str)
            for x in samples) and len({x["i"] for x in samples}) == len(samples)
            and sum(x["correct"] for x in samples) == row["correct"]):
        return "has samples that are not n records of i (each once), correct (adding up to the row's), logprob, " \
               "tokens and prompt"
    return None


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{100 * x:.0f}%" if pct else _number_text(x)


def _number_text(x: float) -> str:
    """A perplexity: two decimals, or three significant digits once it is past a million."""
    return f"{x:.2f}" if abs(x) < 1e6 or not math.isfinite(x) else f"{x:.3g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: a header row, then the rows."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _by(rows: list[dict], key: str, value: str = "accuracy") -> dict[Any, float]:
    groups: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        groups[r["cell"][key]].append(r[value])
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def _counts(rows: list[dict]) -> tuple[int, int]:
    """Right answers and samples over result rows (a row holds its cell's count and n)."""
    return sum(int(r["correct"]) for r in rows), sum(int(r["n"]) for r in rows)


def rate_text(rows: list[dict]) -> str:
    """``85% [74-92], n = 40``: the pooled accuracy, its 95% Wilson interval and its n."""
    k, n = _counts(rows)
    if not n:
        return "-"
    low, high = wilson(k, n)
    return f"{100 * k / n:.0f}% [{100 * low:.0f}-{100 * high:.0f}], n = {n}"


def loglik_text(rows: list[dict]) -> str:
    """The mean per-token log-likelihood of the gold answers, its 95% interval and its n; "-" for
    rows from before per-sample records."""
    values = [per_token(s) for r in rows for s in r.get("samples") or []]
    if not values:
        return "-"
    mean, low, high = mean_interval(values)
    interval = f" [{low:.2f}, {high:.2f}]" if np.isfinite(low) else ""
    return f"{mean:.2f}{interval}, n = {len(values)}"


def perplexity_text(rows: list[dict]) -> str:
    """The perplexity over result rows of one length; with per-window records, its 95% interval over
    windows and their n (``11.03 [10.21-11.92], n = 4``)."""
    if not rows:
        return "-"
    if not all(r.get("windows") and all(math.isfinite(w) for w in r["windows"]) for r in rows):
        return _fmt(float(np.mean([r["ppl"] for r in rows])), pct=False)
    windows = [w for r in rows for w in r["windows"]]
    mean, low, high = (safe_exp(x) for x in mean_interval(windows))
    interval = f" [{_number_text(low)}-{_number_text(high)}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{_number_text(mean)}{interval}, n = {len(windows)}"


def loglik_difference(d: dict[str, Any], digits: int = 3) -> str:
    """A paired answer log-likelihood difference (:func:`ropestretch.compare.differences`' row) with
    its interval, marked (t) where it is Student's t rather than the bootstrap."""
    text = f"{d['loglik_diff']:+.{digits}f}"
    if np.isfinite(d["low"]):
        text += f" [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]" + (" (t)" if d.get("method") == "t" else "")
    return text


def ratio_text(d: dict[str, Any], with_n: bool = False) -> str:
    """A paired perplexity ratio (:func:`ropestretch.compare.pair_perplexity`'s row) with its
    interval where it has one; "-" where the ratio is not a finite number."""
    if not np.isfinite(d["ratio"]):
        return "-"
    text = f"x{d['ratio']:.3f}"
    if np.isfinite(d["low"]) and np.isfinite(d["high"]):
        text += f" [{d['low']:.3f}-{d['high']:.3f}]"
    return text + (f", n = {d['n']}" if with_n else "")


def rows_at(rows: list[dict], length: int, depths: tuple[float, float] | None = None, place=None) -> list[dict]:
    """The rows of one length; with ``depths`` (percent of the context), only those whose place (a
    :class:`ropestretch.eval.tasks.Place`; default the depth) lies in that range."""
    key, percent = (place.key, place.percent) if place is not None else ("depth", 1.0)
    return [r for r in rows if r["cell"]["length"] == length
            and (depths is None or depths[0] <= percent * r["cell"][key] <= depths[1])]


def write_report(folders: list[str | Path], out: str | Path | None = None,
                 threshold: float = RULER_THRESHOLD, base: str | Path | None = None) -> Path:
    if not folders:
        raise UsageError("give at least one run folder")
    runs = [load_run(f) for f in folders]
    labels = [r["label"] for r in runs]
    if len(set(labels)) != len(labels):
        for r in runs:
            r["label"] = str(r["folder"])
    from ropestretch.paths import named_path

    out = named_path(out, "--out") if out is not None else runs[0]["folder"]
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; report writes report.md and figures into a folder")
    previous = out / "report.md"
    if previous.is_file() and not previous.read_text(encoding="utf-8", errors="replace").startswith("# ropestretch"):
        raise UsageError(f"{previous} exists and is not a ropestretch report; choose another --out")
    base_run = None
    if base is not None:
        base_run = next((r for r in runs if Path(r["folder"]).resolve() == Path(base).resolve()
                         or r["label"] == str(base)), None)
        if base_run is None:
            raise UsageError(f"--base {base} is not one of the run folders given")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    from ropestretch.jsonl import write_whole

    write_whole(path, "\n".join(["# ropestretch report", "", "Runs: " + ", ".join(f"`{r['label']}`" for r in runs), ""]
                              + render(runs, out, threshold)
                              + (retention_section(runs, base_run) if base_run is not None else [])))
    return path


def render(runs: list[dict[str, Any]], out: Path, threshold: float = RULER_THRESHOLD) -> list[str]:
    """The report's sections (markdown lines) for loaded runs (:func:`load_run`'s dicts, or any with
    its keys: label, args, results, meta), writing the figures into ``out``; ``threshold``: the
    RULER score an effective length must reach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts: list[str] = []
    trained = [r for r in runs if r["meta"].get("train_seconds") is not None]
    if trained:
        parts += ["## Training cost", "", markdown_table(
            ["run", "positions", "scaling", "window -> target", "steps", "train tokens", "train time", "final loss"],
            [[r["label"], r["meta"].get("positions", "-"), r["meta"].get("scaling", "-"),
              f"{r['meta'].get('window', '-')} -> {r['meta'].get('target', '-')}", str(r["meta"].get("steps", "-")),
              f"{r['meta'].get('train_tokens', 0):,}", f"{r['meta']['train_seconds']:.0f} s",
              f"{r['meta'].get('final_loss') or float('nan'):.3f}"] for r in trained]), ""]

    noted = [(r["label"], note) for r in runs for note in dict.fromkeys(
        n for rows in r["results"].values() for row in rows for n in row.get("engine_notes") or [])]
    if noted:
        parts += ["## Engine notes", "", "Where the engine a run used does not run the checkpoint's RoPE as "
                  "transformers does (docs/engines.md):", ""] + [f"- {label}: {note}" for label, note in noted] + [""]
    for task in _tasks("retrieval"):
        have = [r for r in runs if r["results"].get(task.name)]
        if have and task.suite is None:
            parts += _retrieval_section(plt, out, task, have)
    parts += ruler_section(runs, threshold)
    parts += _paired_section(runs)
    for task in _tasks("perplexity"):
        have = [r for r in runs if r["results"].get(task.name)]
        if have:
            parts += _perplexity_section(plt, out, task, have)
    return parts


def _perplexity_section(plt, out: Path, task, have: list[dict]) -> list[str]:
    """A perplexity task's table (each run's perplexity by length) and its figure."""
    test = task.name
    lengths = sorted({row["cell"]["length"] for r in have for row in r["results"][test]})
    cells = [[perplexity_text([x for x in r["results"][test] if x["cell"]["length"] == n]) for n in lengths]
             for r in have]
    parts = [f"## {task.title}", "", markdown_table(["run"] + [str(n) for n in lengths],
                                            [[r["label"]] + row for r, row in zip(have, cells)]), ""]
    if any(", n = " in c for row in cells for c in row):
        parts += ["With a 95% interval over the windows scored (exp of the Student-t interval of their mean "
                  "per-token NLL) and their n.", ""]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in have:
        by_len = _by(r["results"][test], "length", "ppl")
        ax.plot(list(by_len), list(by_len.values()), marker="o", label=r["label"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(task.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{test}-vs-length.png", dpi=110)
    plt.close(fig)
    return parts + [f"![perplexity vs length]({test}-vs-length.png)", ""]


def heatmap(plt, rows: list[dict], key: str, title: str, path: Path) -> None:
    from matplotlib.colors import LinearSegmentedColormap

    lengths = sorted({r["cell"]["length"] for r in rows})
    depths = sorted({r["cell"][key] for r in rows})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for d in depths:  # rows of several seeds for one cell are pooled
        for n in lengths:
            k, total = _counts([r for r in rows if r["cell"][key] == d and r["cell"]["length"] == n])
            if total:
                grid[depths.index(d), lengths.index(n)] = k / total
    cmap = LinearSegmentedColormap.from_list("rg", ["#c0392b", "#f1c40f", "#1e8449"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(lengths), 1.0 + 0.4 * len(depths)))
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _retrieval_section(plt, out: Path, task, have: list[dict]) -> list[str]:
    """A retrieval task's tables (accuracy with intervals, the answer log-likelihood) and the views
    its registry entry asks for (:class:`ropestretch.eval.tasks.Task`)."""
    test, title, place = task.name, task.title, task.place
    lengths = sorted({row["cell"]["length"] for r in have for row in r["results"][test]})
    header = ["run"] + [str(n) for n in lengths]
    over = f" (all {place.plural})" if place else ""
    parts = [f"## {title}", "", f"Accuracy by context length{over}, with its 95% Wilson interval and n:", "",
             markdown_table(header, [[r["label"]] + [rate_text(rows_at(r["results"][test], n)) for n in lengths]
                             for r in have]), ""]
    if "middle" in task.views:
        parts += [f"Middle {place.plural} only (25-75%):", "", markdown_table(header, [
            [r["label"]] + [rate_text(rows_at(r["results"][test], n, (25, 75), place)) for n in lengths]
            for r in have]), ""]
    if any(row.get("samples") for r in have for row in r["results"][test]):
        parts += ["The gold answer's log-likelihood per token (nats; teacher-forced, whatever the scoring; higher "
                  "is better), mean with its 95% interval and n:", "",
                  markdown_table(header, [[r["label"]] + [loglik_text(rows_at(r["results"][test], n)) for n in lengths]
                                  for r in have]), ""]
    figure = f"{test}-by-{place.figure}.png" if place else None
    if "by_place" in task.views:
        _by_place(plt, have, test, place.key, place.percent, place.axis, f"{title}: accuracy by {place.figure}",
                  out / figure)
    if "by_place" in task.views and "place_table" not in task.views:
        parts += [f"![{test} accuracy by {place.figure}]({figure})", ""]
    if "heatmap" in task.views:
        for r in have:
            path = out / f"{test}-{r['label']}.png"
            heatmap(plt, r["results"][test], place.key, f"{title}: {r['label']}", path)
            parts += [f"![{test} heatmap {r['label']}]({path.name})", ""]
    if "place_table" in task.views:
        places = sorted({row["cell"][place.key] for r in have for row in r["results"][test]})
        parts += [f"Accuracy by {place.plural[:-1]} (all lengths):", "",
                  markdown_table(["run"] + [f"{place.percent * g:.0f}%" for g in places],
                         [[r["label"]] + [rate_text([x for x in r["results"][test] if x["cell"][place.key] == g])
                                          for g in places] for r in have]), ""]
        if figure:
            parts += [f"![{test} by {place.figure}]({figure})", ""]
    return parts


def _by_place(plt, have: list[dict], test: str, key: str, scale: float, xlabel: str, title: str, path: Path) -> None:
    """Accuracy by depth (or gold position) with 95% Wilson bars, one line per run (its colour the
    same in every panel, nudged sideways so that bars do not hide each other), a panel per length."""
    lengths = sorted({row["cell"]["length"] for r in have for row in r["results"][test]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(1.5 + 3.6 * len(lengths), 4.2), squeeze=False, sharey=True)
    handles = {}
    for ax, length in zip(axes[0], lengths):
        for j, r in enumerate(have):
            rows = [x for x in r["results"][test] if x["cell"]["length"] == length]
            places = sorted({x["cell"][key] for x in rows})
            if not places:
                continue
            stats = [_counts([x for x in rows if x["cell"][key] == p]) for p in places]
            acc = np.array([k / n for k, n in stats])
            bounds = np.array([wilson(k, n) for k, n in stats])
            nudge = (j - (len(have) - 1) / 2) * 1.2
            handles[r["label"]] = ax.errorbar([scale * p + nudge for p in places], 100 * acc,
                                              yerr=100 * np.abs(bounds.T - acc), marker="o", capsize=3,
                                              color=f"C{j % 10}", label=r["label"])
        ax.set_title(f"{length} tokens", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-5, 105)
    axes[0][0].set_ylabel("accuracy (%), 95% Wilson interval")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _paired_perplexity(runs: list[dict], test: str) -> list[str]:
    """For every two runs of a perplexity task: their ratio over the same windows, or why they do not pair."""
    parts: list[str] = []
    have = [r for r in runs if r["results"].get(test)]
    reasons: dict[str, list[str]] = {}  # why -> the pairs it holds for, each reason once
    for i, a in enumerate(have):
        for b in have[i + 1:]:
            paired, unpaired = pair_perplexity(a, b, test)
            for line in unpaired:
                head, _, why = line.partition(": ")
                reasons.setdefault(why, []).append(head.replace(" are unpaired on perplexity", ""))
            if paired:
                parts += [f"### Perplexity: `{a['label']}` / `{b['label']}`, the same windows", "", markdown_table(
                    ["length", "n windows", f"perplexity {a['label']}", f"perplexity {b['label']}",
                     "ratio [95% paired t interval]"],
                    [[str(d["length"]), str(d["n"]), _fmt(d["ppl_a"], pct=False), _fmt(d["ppl_b"], pct=False),
                      ratio_text(d)] for d in paired]), ""]
    for why, pairs in reasons.items():  # a reason that names one run holds for every pair with it: said once
        parts += [f"- Unpaired on {test}: {why}" + ("." if why.startswith("`") else f" ({'; '.join(pairs)})."), ""]
    return parts


PREDATES = "predates per-sample records (rerun it into a new folder to pair it)"


def _paired_section(runs: list[dict]) -> list[str]:
    """For every two runs and every retrieval test both ran: their paired differences, or why they
    cannot be paired."""
    parts: list[str] = []
    for task in _tasks("retrieval"):
        test, title = task.name, task.title
        have = [r for r in runs if r["results"].get(test)]
        unpaired: dict[str, list[str]] = {}  # why -> the pairs it holds for: one line per reason
        old: dict[str, None] = {}
        for i, a in enumerate(have):
            for b in have[i + 1:]:
                pairing = pair_runs(a, b, test)
                if isinstance(pairing, str):
                    why = pairing.split(": ", 1)[1]
                    if why.endswith(PREDATES):  # one line for every run without per-sample records
                        old.setdefault(why.split("`")[1], None)
                    else:
                        unpaired.setdefault(why, []).append(f"`{a['label']}` - `{b['label']}`")
                    continue
                rows = differences(pairing)
                extra = "" if not (pairing.only_a or pairing.only_b) else (
                    f" ({pairing.only_a} samples only in `{a['label']}` and {pairing.only_b} only in `{b['label']}` "
                    "are left out)")
                parts += [f"### {title}: `{a['label']}` - `{b['label']}`, {len(pairing.keys)} paired samples{extra}",
                          "", markdown_table(
                              ["length", "depths", "n pairs (independent)", f"accuracy {a['label']}",
                               f"accuracy {b['label']}",
                               "difference", "right only in each", "McNemar exact p",
                               "log-likelihood per token, difference [95% paired interval]"],
                              [[str(d["length"]), BAND_TEXT[d["band"]], f"{d['n']} ({d['units']})", f"{100 * d['acc_a']:.0f}%",
                                f"{100 * d['acc_b']:.0f}%", f"{100 * (d['acc_a'] - d['acc_b']):+.0f} points",
                                f"{d['only_a']} / {d['only_b']}", f"{d['p']:.3g}",
                                loglik_difference(d)]
                               for d in rows]), ""]
        if old:
            parts += [f"- Unpaired on {test}: " + ", ".join(f"`{label}`" for label in old) +
                      (" predate" if len(old) > 1 else " predates") + " per-sample records (rerun into a new folder "
                      "to pair).", ""]
        parts += [f"- Unpaired on {test} ({why}): {', '.join(pairs)}.\n" for why, pairs in unpaired.items()]
    for task in _tasks("perplexity"):
        parts += _paired_perplexity(runs, task.name)
    if parts:
        parts = ["## Paired comparisons", "",
                 "Runs over the same prompts (same seed, scoring and prompt fingerprints), compared sample by sample: "
                 "the accuracy difference with McNemar's exact test on the samples only one of them got right, and "
                 "the difference of the answer's per-token log-likelihood with a 95% paired interval over "
                 "independent units (a needle draw placed at several depths is one unit, in brackets after n): a "
                 f"bootstrap from {BOOTSTRAP_MIN_PAIRS} units on, else the paired Student-t interval, marked (t), "
                 "as a percentile bootstrap over a few units covers well under 95% (about 81% over 4). "
                 "McNemar's test counts every sample as independent, which a needle draw's depths are not: read its p "
                 "as optimistic there. Depths: all; the ends (0-10% and 90-100%); the middle (25-75%). Perplexity "
                 "pairs window by window (the same fingerprints): the ratio is exp of the mean difference of the "
                 "windows' per-token NLL, with its paired Student-t interval.", ""] + parts
    return parts





def _shares(row: dict[str, Any]) -> list[float]:
    """A RULER row's per-sample shares of the references found (its right/wrong where it has none)."""
    return [float(x.get("score", x["correct"])) for x in row.get("samples") or []]


def effective_length(averages: dict[int, float], threshold: float) -> int | None:
    """The longest tested length up to which every tested length's score (percent) reaches
    ``threshold``; None when the shortest does not."""
    found = None
    for length in sorted(averages):
        if not averages[length] >= threshold:
            break
        found = length
    return found


def ruler_section(runs: list[dict[str, Any]], threshold: float = RULER_THRESHOLD) -> list[str]:
    """RULER's scores per run: each task's score (percent of references found, 95% interval, n) by
    length, the average over the tasks run (a stratified bootstrap interval) and the effective length
    against ``threshold`` and against NoLiMa's 85% of the run's own score at its shortest length."""
    from ropestretch.stats import share_interval, stratified_mean_interval

    tasks = [t for t in _tasks("retrieval") if t.suite == "ruler"]
    parts: list[str] = []
    for run in runs:
        have = [t for t in tasks if run["results"].get(t.name)]
        if not have:
            continue
        lengths = sorted({r["cell"]["length"] for t in have for r in run["results"][t.name]})
        table, averages, complete = [], {}, True
        for length in lengths:
            groups = {t.name: [x for r in run["results"][t.name] if r["cell"]["length"] == length for x in _shares(r)]
                      for t in have}
            cells = []
            for t in have:
                mean, low, high = share_interval(groups[t.name])
                cells.append("-" if not groups[t.name] else
                             f"{100 * mean:.1f} [{100 * low:.0f}-{100 * high:.0f}], n = {len(groups[t.name])}")
            complete &= all(groups.values())
            mean, low, high = stratified_mean_interval(list(groups.values()))
            averages[length] = 100 * mean
            table.append([str(length)] + cells + [f"{100 * mean:.1f} [{100 * low:.1f}-{100 * high:.1f}]"])
        parts += [f"## RULER: {run['label']}", "",
                  "Each task's score is RULER's: the share of the references found in the generated text (percent), "
                  "with its 95% interval (Wilson's where every sample is all or nothing, else Student's t) and n; the "
                  f"average is over the {len(have)} synthetic task(s) run, with a bootstrap interval stratified by "
                  "task, which has no width where no task's samples differ (RULER's published average also holds "
                  "its two QA tasks).", "",
                  markdown_table(["length"] + [t.name for t in have] + ["average"], table), ""]
        absolute = effective_length(averages, threshold)
        short = averages[lengths[0]]
        relative = effective_length(averages, NOLIMA_SHARE * short)
        parts += ["Effective length, the longest tested length up to which every tested length reaches the threshold"
                  + ("" if complete else " (some tasks lack some lengths: the averages there hold fewer tasks)") + ":",
                  f"- at RULER's threshold, {threshold:g}: "
                  + (f"{absolute} tokens" + (" (the only length tested)" if len(lengths) == 1 else "") if absolute
                     else f"none (below it at {lengths[0]})"),
                  (f"- at NoLiMa's, 85% of the run's own score at {lengths[0]} tokens ({NOLIMA_SHARE * short:.1f}): "
                   + (f"{relative} tokens" if relative and short > 0 else "none" if short > 0
                      else f"none (it scores 0 at {lengths[0]})")) if len(lengths) > 1 else
                  f"- at NoLiMa's, 85% of the model's short-context score: not measured here (the run tested one "
                  f"length, {lengths[0]}; run a length inside the model's window with it)", ""]
    return parts


RETENTION_ANCHOR = 0.985  # LongRoPE2 kept more than 98.5% of Llama-3-8B's short-context performance


def _units(pairing, keys_ok) -> tuple[list[float], list[float]]:
    """Per independent unit (a needle draw, else a sample) of the paired samples ``keys_ok`` selects:
    the share right in each run."""
    from ropestretch.eval.tasks import TASKS

    by_draw = TASKS[pairing.test].unit == "draw" if pairing.test in TASKS else False
    units: dict[tuple, list[int]] = {}
    for j, (seed, length, where, i) in enumerate(pairing.keys):
        if keys_ok(length):
            units.setdefault((seed, length, i) if by_draw else (seed, length, where, i), []).append(j)
    a = [sum(bool(pairing.left[j]["correct"]) for j in js) / len(js) for js in units.values()]
    b = [sum(bool(pairing.right[j]["correct"]) for j in js) / len(js) for js in units.values()]
    return a, b


def retention_section(runs: list[dict[str, Any]], base: dict[str, Any]) -> list[str]:
    """What each run keeps of ``base`` inside the base's window, beside what it gains past it: the
    in-window accuracy as a paired ratio to the base's (units resampled together; LongRoPE2's
    anchor is 98.5%), the in-window perplexity ratio, and the accuracy difference past the window."""
    from ropestretch.compare import pair_perplexity, pair_runs
    from ropestretch.stats import mcnemar_exact, paired_ratio_of_means

    parts: list[str] = []
    for run in runs:
        if run is base:
            continue
        window = run["meta"].get("window")
        if not isinstance(window, int):
            parts += [f"- `{run['label']}` has no ropestretch model record with its window: no retention measured.", ""]
            continue
        rows = []
        for task in _tasks("retrieval"):
            if not (run["results"].get(task.name) and base["results"].get(task.name)):
                continue
            pairing = pair_runs(run, base, task.name)
            if isinstance(pairing, str):
                rows.append([task.name, pairing, "", ""])
                continue
            a, b = _units(pairing, lambda n, w=window: n <= w)
            ratio, low, high = paired_ratio_of_means(a, b)
            kept = "-" if not a else ("base 0%: no ratio" if not np.isfinite(ratio) else
                                      f"{100 * ratio:.1f}% [{100 * low:.1f}-{100 * high:.1f}], n = {len(a)}")
            past = [j for j, k in enumerate(pairing.keys) if k[1] > window]
            gain = "-"
            if past:
                ra = [bool(pairing.left[j]["correct"]) for j in past]
                rb = [bool(pairing.right[j]["correct"]) for j in past]
                only_a, only_b, pvalue = mcnemar_exact(ra, rb)
                gain = (f"{100 * (sum(ra) - sum(rb)) / len(past):+.0f} points ({only_a} / {only_b} right only in "
                        f"each, McNemar p = {pvalue:.2g}), n = {len(past)}")
            rows.append([task.name, f"<= {window}", kept, gain])
        for task in _tasks("perplexity"):
            if run["results"].get(task.name) and base["results"].get(task.name):
                paired, _ = pair_perplexity(run, base, task.name)
                for d in paired:
                    rows.append([task.name, str(d["length"]) + (" (in window)" if d["length"] <= window else ""),
                                 ratio_text(d, with_n=True) + " (perplexity ratio: below 1 is better)", ""])
        if rows:
            parts += [f"### `{run['label']}` against `{base['label']}`", "", markdown_table(
                ["test", "lengths", "in-window retention: accuracy ratio to the base [95% paired bootstrap]",
                 "past the window: accuracy difference"], rows), ""]
    if parts:
        parts = ["## Retention: what a model keeps inside its base's window", "",
                 f"Each run against `{base['label']}` on the same prompts: inside the base's window, the accuracy as a "
                 "ratio to the base's (paired, a needle draw one unit; LongRoPE2 kept more than "
                 f"{100 * RETENTION_ANCHOR:.1f}% of Llama-3-8B's short-context performance), and the perplexity ratio "
                 "over the same windows; past the window, the accuracy difference.", ""] + parts
    return parts
