"""``report.md`` and figures from one or more eval run folders: a table per test, the needle
heatmap (depth x length), accuracy by gold position, perplexity vs length with a line per model."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ropestretch.errors import UsageError
from ropestretch.eval.store import ARGS_FILE, read_results


def load_run(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / ARGS_FILE).is_file():
        raise UsageError(f"{folder} is not an eval run folder (no {ARGS_FILE})")
    try:
        args = json.loads((folder / ARGS_FILE).read_text(encoding="utf-8"))
        if not isinstance(args, dict) or not all(isinstance(v, dict) for v in args.values()):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{folder / ARGS_FILE} is not a ropestretch run record") from None
    results: dict[str, list[dict]] = defaultdict(list)
    for row in read_results(folder):
        results[row["test"]].append(row)
    model = next((a.get("model") for a in args.values() if a.get("model")), None)
    meta = {}
    where = (folder / model) if model and not Path(model).is_absolute() else Path(model or ".")
    if model and (where / "ropestretch.json").is_file():  # run records keep paths relative to the run folder
        meta = json.loads((where / "ropestretch.json").read_text())
    return {"folder": folder, "label": folder.name, "args": args, "results": dict(results), "meta": meta}


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _by(rows: list[dict], key: str, value: str = "accuracy") -> dict[Any, float]:
    groups: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        groups[r["cell"][key]].append(r[value])
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def write_report(folders: list[str | Path], out: str | Path | None = None) -> Path:
    if not folders:
        raise UsageError("give at least one run folder")
    runs = [load_run(f) for f in folders]
    labels = [r["label"] for r in runs]
    if len(set(labels)) != len(labels):
        for r in runs:
            r["label"] = str(r["folder"])
    out = Path(out) if out else runs[0]["folder"]
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; report writes report.md and figures into a folder")
    previous = out / "report.md"
    if previous.is_file() and not previous.read_text(encoding="utf-8", errors="replace").startswith("# ropestretch"):
        raise UsageError(f"{previous} exists and is not a ropestretch report; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ["# ropestretch report", "", "Runs: " + ", ".join(f"`{r['label']}`" for r in runs), ""]
    trained = [r for r in runs if r["meta"].get("train_seconds") is not None]
    if trained:
        parts += ["## Training cost", "", _table(
            ["run", "positions", "scaling", "window -> target", "steps", "train tokens", "train time", "final loss"],
            [[r["label"], r["meta"].get("positions", "-"), r["meta"].get("scaling", "-"),
              f"{r['meta']['window']} -> {r['meta']['target']}", str(r["meta"].get("steps")),
              f"{r['meta'].get('train_tokens', 0):,}", f"{r['meta']['train_seconds']:.0f} s",
              f"{r['meta'].get('final_loss') or float('nan'):.3f}"] for r in trained]), ""]

    for test, title in (("passkey", "Passkey retrieval"), ("needle", "Needle in a haystack"),
                        ("lines", "LongChat-Lines"), ("kv", "Key-value retrieval (lost in the middle)")):
        have = [r for r in runs if r["results"].get(test)]
        if not have:
            continue
        lengths = sorted({row["cell"]["length"] for r in have for row in r["results"][test]})
        parts += [f"## {title}", "", "Accuracy by context length" +
                  (" (mean over depths)" if test in ("passkey", "needle") else "") +
                  (" (mean over gold positions)" if test == "kv" else "") + ":", ""]
        rows = []
        for r in have:
            by_len = _by(r["results"][test], "length")
            rows.append([r["label"]] + [_fmt(by_len.get(n)) for n in lengths])
        parts += [_table(["run"] + [str(n) for n in lengths], rows), ""]
        if test in ("passkey", "needle"):
            mids = []
            for r in have:
                cells = [row for row in r["results"][test] if 25 <= row["cell"]["depth"] <= 75]
                mids.append([r["label"]] + [_fmt(_by([c for c in cells if c["cell"]["length"] == n], "length").get(n))
                                            for n in lengths])
            parts += ["Middle depths only (25-75%):", "", _table(["run"] + [str(n) for n in lengths], mids), ""]
        if test == "needle":
            for r in have:
                path = out / f"needle-{r['label']}.png"
                _heatmap(plt, r["results"][test], f"Needle in a haystack: {r['label']}", path)
                parts += [f"![needle heatmap {r['label']}]({path.name})", ""]
        if test == "kv":
            fig, ax = plt.subplots(figsize=(6, 4))
            for r in have:
                by_gold = _by(r["results"][test], "gold")
                ax.plot([100 * g for g in by_gold], [100 * v for v in by_gold.values()], marker="o", label=r["label"])
            ax.set_xlabel("position of the queried key in the context (%)")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(-5, 105)
            ax.set_title("Key-value retrieval by gold position")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / "kv-by-position.png", dpi=110)
            plt.close(fig)
            golds = sorted({row["cell"]["gold"] for r in have for row in r["results"]["kv"]})
            parts += ["Accuracy by gold position (mean over lengths):", "",
                      _table(["run"] + [f"{100 * g:.0f}%" for g in golds],
                             [[r["label"]] + [_fmt(_by(r["results"]["kv"], "gold").get(g)) for g in golds]
                              for r in have]), "", "![kv by position](kv-by-position.png)", ""]

    have = [r for r in runs if r["results"].get("ppl")]
    if have:
        lengths = sorted({row["cell"]["length"] for r in have for row in r["results"]["ppl"]})
        parts += ["## Perplexity vs length", "", _table(
            ["run"] + [str(n) for n in lengths],
            [[r["label"]] + [_fmt(_by(r["results"]["ppl"], "length", "ppl").get(n), pct=False) for n in lengths]
             for r in have]), ""]
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in have:
            by_len = _by(r["results"]["ppl"], "length", "ppl")
            ax.plot(list(by_len), list(by_len.values()), marker="o", label=r["label"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("perplexity")
        ax.set_title("Perplexity vs length")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "ppl-vs-length.png", dpi=110)
        plt.close(fig)
        parts += ["![perplexity vs length](ppl-vs-length.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def _heatmap(plt, rows: list[dict], title: str, path: Path) -> None:
    from matplotlib.colors import LinearSegmentedColormap

    lengths = sorted({r["cell"]["length"] for r in rows})
    depths = sorted({r["cell"]["depth"] for r in rows})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in rows:
        grid[depths.index(r["cell"]["depth"]), lengths.index(r["cell"]["length"])] = r["accuracy"]
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
