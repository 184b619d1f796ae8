"""SmolLM2-135M-Instruct inside its window, asked in the old (legacy) and the new (chat) prompt forms.

    python benchmarks/prompt_forms.py --out runs/prompt-forms      # resumable; about 2 h on 2 cores

Passkey and needle by greedy generation at 2048 and 4096 tokens, 10 depths from 0 to 100, 20
samples per cell (the defaults of `ropestretch eval`), into one run folder per form under --out,
so an interrupted run continues where it stopped. Prints accuracy per task, length and form, and
each form's worst depth; the README quotes the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

FORMS = ("legacy", "chat")
TASKS = ("passkey", "needle")


def run(out: Path, lengths: list[int], samples: int, tasks: tuple[str, ...] = TASKS) -> None:
    from tqdm.auto import tqdm

    from ropestretch.checkpoints import resolve_model
    from ropestretch.data.prompts import prompt_format
    from ropestretch.data.tasks import Haystack
    from ropestretch.eval import Evaluator, RunStore, load_for_eval, run_needle, run_passkey
    from ropestretch.eval.store import run_arguments

    model, tok = load_for_eval(str(resolve_model("smollm2-135m-instruct")))
    depths = [round(float(x), 1) for x in np.linspace(0, 100, 10)]
    haystack = Haystack(tok)
    for form in FORMS:
        for task in tasks:
            folder = out / form
            store = RunStore(folder, task, run_arguments(task, "smollm2-135m-instruct", lengths, samples, 0, None,
                                                         depths, scoring="generate", prompt=form, dtype="fp32",
                                                         folder=folder))
            bar = tqdm(total=len(lengths) * len(depths), desc=f"{form} {task}", unit="cell")
            ev = Evaluator(model, tok, "generate", batch_size=4, haystack=haystack, progress=bar,
                           prompt=prompt_format(tok, form))
            (run_passkey if task == "passkey" else run_needle)(ev, store, lengths, depths, samples, 0)
            bar.close()


def table(out: Path) -> None:
    from ropestretch.eval import read_results

    print(f"| task | length | {' | '.join(FORMS)} | worst depth ({' / '.join(FORMS)}) |")
    print(f"|---|---|{'---|' * len(FORMS)}---|")
    rows = {form: list(read_results(out / form)) for form in FORMS}
    for task in TASKS:
        lengths = sorted({r["cell"]["length"] for form in FORMS for r in rows[form] if r["test"] == task})
        for length in lengths:
            cells, worst = [], []
            for form in FORMS:
                mine = [r for r in rows[form] if r["test"] == task and r["cell"]["length"] == length]
                correct, n = sum(r["correct"] for r in mine), sum(r["n"] for r in mine)
                cells.append(f"{100 * correct / n:.1f}% ({correct}/{n})" if n else "-")
                low = min(mine, key=lambda r: r["accuracy"]) if mine else None
                worst.append(f"{100 * low['accuracy']:.0f}% at {low['cell']['depth']:g}" if low else "-")
            print(f"| {task} | {length} | {' | '.join(cells)} | {' / '.join(worst)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lengths", default="2048,4096")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--tasks", default=",".join(TASKS), help="passkey, needle or both (default both)")
    parser.add_argument("--table-only", action="store_true", help="print the table of what is already measured")
    args = parser.parse_args()
    if not args.table_only:
        tasks = tuple(t for t in args.tasks.split(",") if t)
        if not tasks or set(tasks) - set(TASKS):
            parser.error(f"--tasks takes {', '.join(TASKS)}")
        run(args.out, [int(x) for x in args.lengths.split(",")], args.samples, tasks)
    table(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
