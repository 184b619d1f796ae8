"""bf16 against fp32 on this CPU, in one run: SmolLM2-135M-Instruct's perplexity at 4096 and 8192
tokens (the code path of `ropestretch eval ppl`), the time and perplexity ratios; and with
``--train``, the shipped tiny base fine-tuned for the same steps in bf16 mixed precision and in
fp32, its final loss and perplexity at 256 tokens in each.

    python benchmarks/bf16_speed.py [--lengths 4096,8192] [--train]

Whether the CPU has native bf16 (AMX or AVX512-BF16, as torch reports it) is printed first: where
it has not, torch emulates bf16 and it is the slower of the two, which is why `--dtype auto` picks
fp32 there.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def perplexity(model_dir: str, dtype: str, lengths: list[int]) -> dict[int, tuple[float, float]]:
    from ropestretch.data.corpus import builtin_documents
    from ropestretch.eval import load_for_eval, token_stream
    from ropestretch.eval.prefill import sequence_nll
    from ropestretch.hardware import Placement

    model, tok = load_for_eval(model_dir, placement=Placement("cpu", dtype))
    stream = token_stream(tok, builtin_documents())
    out = {}
    for n in lengths:
        ids = torch.tensor([stream[:n]])
        sequence_nll(model, ids[:, :64])  # warm-up
        start = time.perf_counter()
        nll, count = sequence_nll(model, ids)
        out[n] = (time.perf_counter() - start, float(np.exp(nll / count)))
        print(f"  {dtype} {n}: {out[n][0]:.1f} s, perplexity {out[n][1]:.3f}", flush=True)
    return out


def fine_tune(dtype: str, steps: int, folder: Path) -> tuple[float, float, float]:
    """The tiny base, CREAM x YaRN to 1024, ``steps`` steps in ``dtype`` on the same prose: final
    loss, perplexity at 256 (in fp32), seconds."""
    from ropestretch.data.corpus import builtin_documents

    data = folder.parent / "data"
    if not data.exists():
        data.mkdir(parents=True)
        for i, doc in enumerate(builtin_documents()[:200]):
            (data / f"{i:03d}.txt").write_text(doc)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ropestretch", "train", "--model", str(REPO / "models" / "tiny-llama-256"),
                    "--data", str(data), "--out", str(folder), "--target", "1024", "--positions", "cream", "--scaling", "yarn",
                    "--steps", str(steps), "--batch-size", "8", "--lr", "1e-3", "--dtype", dtype, "--no-progress",
                    "--save-steps", str(10 * steps)], check=True)
    seconds = time.perf_counter() - start
    loss = json.loads((folder / "ropestretch.json").read_text())["final_loss"]
    ppl = perplexity(str(folder), "fp32", [256])[256][1]
    return loss, ppl, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", default="4096,8192")
    parser.add_argument("--train", action="store_true", help="also fine-tune the tiny base in both precisions")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    from ropestretch.checkpoints import resolve_model
    from ropestretch.hardware import cpu_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_bf16()}")
    lengths = [int(x) for x in args.lengths.split(",")]
    model_dir = str(resolve_model(args.model))
    fp32 = perplexity(model_dir, "fp32", lengths)
    bf16 = perplexity(model_dir, "bf16", lengths)
    for n in lengths:
        print(f"{args.model} at {n}: bf16/fp32 time {bf16[n][0] / fp32[n][0]:.2f}, perplexity "
              f"{bf16[n][1] / fp32[n][1]:.4f} ({bf16[n][1]:.3f} / {fp32[n][1]:.3f})")
    if args.train:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {dtype: fine_tune(dtype, args.steps, Path(tmp) / dtype) for dtype in ("fp32", "bf16")}
        for dtype, (loss, ppl, seconds) in runs.items():
            print(f"tiny base, {args.steps} steps in {dtype}: final loss {loss:.4f}, perplexity at 256 {ppl:.3f}, "
                  f"{seconds:.0f} s")
        print(f"bf16/fp32: time {runs['bf16'][2] / runs['fp32'][2]:.2f}, final loss {runs['bf16'][0] / runs['fp32'][0]:.4f}, "
              f"perplexity {runs['bf16'][1] / runs['fp32'][1]:.4f}")


if __name__ == "__main__":
    main()
