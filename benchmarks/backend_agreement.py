"""The evaluation backends against transformers on the same prompts: SmolLM2-135M-Instruct's YaRN x4
export (the checkpoint folder for transformers and vLLM, the Q4_1 file applied GGUF to GGUF for
llama.cpp), needle and passkey by greedy generation with the answer's log-likelihood, perplexity;
and each backend's time per prompt. Run in the engines venv (`make engines` builds it):

    .venv-engines/bin/python benchmarks/backend_agreement.py --out /tmp/agree --lengths 4096,16384
    .venv-engines/bin/python benchmarks/backend_agreement.py --out /tmp/agree --lengths 4096 --samples 1 --quick
    .venv-engines/bin/python benchmarks/backend_agreement.py --out /tmp/time --lengths 8192,16384 --depths 50 \
        --samples 1 --tasks passkey              # the time per prompt at 8K and 16K, one prompt each

Each backend's run folder is an ordinary `ropestretch eval` run (`ropestretch report` pairs them);
the table printed at the end pairs every backend with transformers prompt by prompt: the share of
prompts with the same answer (right or wrong), the largest and the mean difference of the answer's
log-likelihood per token, and the perplexity ratio over the same windows; then the seconds per
prompt. ``--quick`` (what `make engines` runs) is one length, one sample per depth at two depths,
and fails (exit 1) when an engine answers fewer than 95% of the prompts as transformers does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ropestretch.jsonl import read_jsonl

MODEL = "smollm2-135m-instruct"
AGREEMENT = 0.95  # the share of prompts every backend must answer as transformers does


def exports(out: Path) -> dict[str, Path]:
    """The YaRN x4 checkpoint folder and its GGUF (the shipped Q4_1 file with its RoPE rewritten)."""
    from ropestretch.checkpoints import bundled_file, resolve_model
    from ropestretch.cli import main
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint

    base = resolve_model(MODEL)
    rope = load_rope_config(base)
    folder = out / "models" / "smollm2-yarn"
    if not (folder / "ropestretch.json").is_file():
        apply_to_checkpoint(base, folder, scale(rope, "yarn", 4 * rope.window))
    gguf = out / "models" / "smollm2-yarn.gguf"
    if not gguf.is_file():
        code = main(["apply", "--model", str(bundled_file(MODEL)), "--scaling", "yarn", "--target",
                     str(4 * rope.window), "--out", str(gguf)])
        if code:
            sys.exit(f"apply to {gguf} failed")
    return {"transformers": folder, "vllm": folder, "llamacpp": gguf}


def measure(out: Path, backends: list[str], lengths: list[int], depths: list[float], samples: int,
            dtype: str, tasks: tuple[str, ...] = ("needle", "passkey", "ppl")) -> dict[str, dict]:
    """Each backend's needle, passkey and perplexity runs (those of ``tasks``); returns {backend: {task:
    (folder, seconds)}}."""
    from ropestretch.eval import run

    models = exports(out)
    done: dict[str, dict] = {}
    for backend in backends:
        done[backend] = {}
        for task, options in (("needle", {"depths": depths, "scoring": "generate", "prompt": "chat"}),
                              ("passkey", {"depths": depths, "scoring": "generate", "prompt": "chat"}),
                              ("ppl", {})):
            if task not in tasks:
                continue
            folder = out / "evals" / f"{backend}-{dtype}" / task
            started = time.time()
            run(task, str(models[backend]), folder, lengths=lengths, samples=samples if task != "ppl" else 2,
                backend=backend, dtype=dtype, batch_size=1, **options)
            done[backend][task] = (folder, time.time() - started)
    return done


def agreement(done: dict[str, dict]) -> list[list[str]]:
    """Every backend against transformers, prompt by prompt and window by window."""
    from ropestretch.compare import pair_perplexity, pair_runs, per_token
    from ropestretch.report import load_run

    rows = []
    reference = done.get("transformers", {})
    for backend, runs in done.items():
        if backend == "transformers":
            continue
        for task in [t for t in ("needle", "passkey") if t in runs]:
            a, b = load_run(reference[task][0]), load_run(runs[task][0])
            pairing = pair_runs(a, b, task)
            if isinstance(pairing, str):
                rows.append([backend, task, "-", pairing, "-", "-"])
                continue
            same = sum(x["correct"] == y["correct"] for x, y in zip(pairing.left, pairing.right))
            gaps = [abs(per_token(x) - per_token(y)) for x, y in zip(pairing.left, pairing.right)]
            right = (sum(x["correct"] for x in pairing.left), sum(y["correct"] for y in pairing.right))
            rows.append([backend, task, str(len(gaps)), f"{same} of {len(gaps)} ({100 * same / len(gaps):.0f}%)",
                         f"{max(gaps):.3f} / {sum(gaps) / len(gaps):.3f}", f"{right[0]} / {right[1]}"])
        if "ppl" not in runs:
            continue
        paired, unpaired = pair_perplexity(load_run(reference["ppl"][0]), load_run(runs["ppl"][0]), "ppl")
        for d in paired:
            rows.append([backend, f"ppl {d['length']}", str(d["n"]), "-", "-",
                         f"x{d['ratio']:.4f} [{d['low']:.4f}-{d['high']:.4f}]"])
        rows += [[backend, "ppl", "-", u, "-", "-"] for u in unpaired]
    return rows


def timings(done: dict[str, dict]) -> list[list[str]]:
    """Seconds per prompt for each backend and length (the rows' own times), and the ratio to transformers'."""
    out = []
    per = {}
    for backend, runs in done.items():
        for task in [t for t in ("needle", "passkey") if t in runs]:
            for row in read_jsonl(Path(runs[task][0]) / "results.jsonl"):
                per.setdefault((backend, row["cell"]["length"]), []).append(row["seconds"] / row["n"])
    for (backend, length), values in sorted(per.items()):
        mean = sum(values) / len(values)
        base = per.get(("transformers", length))
        ratio = f"x{mean / (sum(base) / len(base)):.2f}" if base else "-"
        out.append([backend, str(length), f"{mean:.1f}", ratio])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="working folder: the exports and one run folder per backend")
    parser.add_argument("--lengths", default="4096")
    parser.add_argument("--depths", default="0,50,100")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--backends", default="transformers,vllm,llamacpp")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--tasks", default="needle,passkey,ppl", help="which of needle, passkey and ppl to run")
    parser.add_argument("--quick", action="store_true", help="the engine check's size, and its verdict")
    args = parser.parse_args()
    from ropestretch.report import markdown_table

    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [0.0, 100.0] if args.quick else [float(x) for x in args.depths.split(",")]
    samples = 1 if args.quick else args.samples
    backends = args.backends.split(",")
    if "transformers" not in backends:
        backends.insert(0, "transformers")
    tasks = tuple(args.tasks.split(","))
    if not set(tasks) <= {"needle", "passkey", "ppl"}:
        parser.error(f"--tasks takes needle, passkey and ppl, got {args.tasks!r}")
    done = measure(Path(args.out), backends, lengths, depths, samples, args.dtype, tasks)
    rows = agreement(done)
    print(markdown_table(["backend", "task", "n", "same answer as transformers", "log-lik/token gap, largest / mean",
                  "right: transformers / backend, or ppl ratio"], rows))
    print()
    print(markdown_table(["backend", "length", "seconds per prompt", "/ transformers"], timings(done)))
    (Path(args.out) / "agreement.json").write_text(json.dumps({"agreement": rows, "timings": timings(done)}, indent=2))
    low = [r for r in rows if r[3] != "-" and "(" in r[3] and int(r[3].split("(")[1].rstrip("%)")) < 100 * AGREEMENT]
    if args.quick and low:
        print(f"backends answering fewer than {AGREEMENT:.0%} of the prompts as transformers: "
              + ", ".join(f"{r[0]} {r[1]}" for r in low), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a new process: this guard is required
    sys.exit(main())
