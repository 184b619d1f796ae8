"""Self-Extend and STRING against the model's own attention (SDPA): time and peak memory of one
prompt's prefill on SmolLM2-135M-Instruct, each method in its own process, ratios printed from one run.

    python benchmarks/attention_cost.py --length 16384            # fp32, 2 threads
    python benchmarks/attention_cost.py --length 32768 --group 8
    python benchmarks/attention_cost.py --length 4096 --dtype bf16

The prompt is prefilled as the evaluation does (chunks of 2048 tokens through the KV cache, logits
at the last position only); the peak is the process's maximum resident set (weights, KV cache and
the attention's working set). Self-Extend runs with G 4, w 1024 (reach 29,696 on SmolLM2's 8192
positions; `--group 8` reaches 58,368, for 32K); STRING, which shifts positions inside the window and
so reaches only N + S - W (10,794 on SmolLM2 with its defaults), runs on the YaRN x4 export (its
RoPE over 32768 positions, S 10922), and so does a second SDPA row, the cost it is compared with.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from ropestretch.checkpoints import resolve_model
from ropestretch.eval import load_for_eval
from ropestretch.eval.prefill import new_cache, prefill
from ropestretch.hardware import Placement
method, length, dtype, threads, model = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
options = json.loads(sys.argv[6])
torch.set_num_threads(threads)
lm, tok = load_for_eval(str(resolve_model(model)), placement=Placement("cpu", dtype))
if method != "sdpa":
    from ropestretch.attention import enable
    enable(lm, method, length, **options.get(method, {}))
ids = torch.randint(100, 40000, (1, length), generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.time()
with torch.no_grad():
    prefill(lm, ids, new_cache(lm))
print(json.dumps({"seconds": time.time() - started, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": before / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="sdpa,self-extend,string")
    parser.add_argument("--group", type=int, default=4, help="Self-Extend's G (reach (N - w) * G + w: 8 for 32K)")
    parser.add_argument("--neighbor", type=int, default=1024, help="Self-Extend's w")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model whose RoPE covers the length for "
                        "every method (STRING reaches N + S - W)")
    args = parser.parse_args()
    import tempfile
    from pathlib import Path

    from ropestretch.checkpoints import resolve_model
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint

    options = {"self-extend": {"group": args.group, "neighbor": args.neighbor}}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = resolve_model(args.model)
        rope = load_rope_config(base_dir)
        yarn = apply_to_checkpoint(base_dir, Path(tmp) / "yarn", scale(rope, "yarn", 4 * rope.window))
        runs = [(m, str(base_dir)) for m in args.methods.split(",") if m != "string"]
        runs += [("sdpa (yarn x4)", str(yarn)), ("string (yarn x4)", str(yarn))] if "string" in args.methods else []
        for label, model in runs:
            method = label.split(" ")[0]
            done = subprocess.run([sys.executable, "-c", CHILD, method, str(args.length), args.dtype,
                                   str(args.threads), model, json.dumps(options)], capture_output=True, text=True)
            if done.returncode:
                print(f"{label}: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                continue
            rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows.get("sdpa")
    print(f"| attention | seconds ({args.length} tokens, {args.dtype}) | peak memory (MB) | time / sdpa | peak / sdpa |")
    print("|---|---|---|---|---|")
    for method, r in rows.items():
        ref = rows.get("sdpa (yarn x4)") if "yarn" in method else base
        ratio_t = f"x{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
        ratio_m = f"x{r['peak_mb'] / ref['peak_mb']:.2f}" if ref else "-"
        print(f"| {method} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {ratio_t} | {ratio_m} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
