"""Peak memory and speed of a long prompt on SmolLM2-135M-Instruct: chunked prefill through the KV
cache (what `ropestretch eval` does) against one whole-sequence forward (what it did before).

    python benchmarks/prefill_memory.py                      # 4K, 8K, 16K, 32K; about 40 min on 2 cores
    python benchmarks/prefill_memory.py --lengths 4096 --modes chunked

Each measurement runs in a fresh process. The figure is the peak resident memory while the prompt
runs (VmHWM, reset after loading, which briefly holds the weights twice) minus the process's memory
before the weights were loaded (Python, torch and transformers themselves), beside the lower
bound: the float32 weights plus the float32 KV cache of the whole prompt. The goal is a ratio of
at most 1.3 at 32K, and prefill no slower than the whole forward. The model reads YaRN x4, so 16K
and 32K are within what it is scaled for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _rss(field: str) -> int:
    """VmRSS or VmHWM (the peak since the last reset) of this process, in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # "5": reset the peak resident set size
        handle.write("5")


def measure(length: int, mode: str, chunk: int) -> dict:
    import numpy as np
    import torch

    from ropestretch.checkpoints import resolve_model
    from ropestretch.data.tasks import Haystack
    from ropestretch.eval import load_for_eval
    from ropestretch.eval.prefill import new_cache, prefill

    from transformers import AutoTokenizer

    folder = resolve_model("smollm2-135m-instruct", quiet=True)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([Haystack(tok).fill(length, np.random.default_rng(0))[0]])
    import gc

    gc.collect()
    before = _rss("VmRSS")  # the prompt is built: what follows is the model and its run
    model, _ = load_for_eval(str(folder))
    model.config.rope_parameters = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 4.0,
                                    "original_max_position_embeddings": 8192}
    model.model.rotary_emb.__init__(model.config)  # yarn x4: the frequencies a 32K evaluation runs
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * length * 4
    gc.collect()
    _reset_peak()  # loading briefly holds the weights twice; what is measured is the prompt's run
    started = time.time()
    with torch.no_grad():
        if mode == "chunked":
            prefill(model, ids, new_cache(model), chunk)
        else:  # the former path: one forward over everything, logits at every position
            model(input_ids=ids, use_cache=True)
    seconds = time.time() - started
    peak = _rss("VmHWM") - before
    return {"length": length, "mode": mode, "chunk": chunk if mode == "chunked" else None,
            "peak_gb": round(peak / 2**30, 3), "lower_bound_gb": round((weights + kv) / 2**30, 3),
            "ratio": round(peak / (weights + kv), 3), "seconds": round(seconds, 1),
            "tokens_per_s": round(length / seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--modes", default="chunked,whole")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--one", nargs=2, metavar=("LENGTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.chunk)))
        return 0
    print(f"{'length':>7} {'mode':>8} {'peak GB':>8} {'weights+KV GB':>14} {'ratio':>6} {'seconds':>8} {'tok/s':>7}")
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        for mode in args.modes.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", str(length), mode, "--chunk", str(args.chunk)],
                                  capture_output=True, text=True)
            if done.returncode:
                print(f"{length:>7} {mode:>8} failed: {done.stderr.strip().splitlines()[-1]}", flush=True)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{length:>7} {mode:>8} {row['peak_gb']:>8.2f} {row['lower_bound_gb']:>14.2f} {row['ratio']:>6.2f} "
                  f"{row['seconds']:>8.1f} {row['tokens_per_s']:>7.1f}", flush=True)
    for length in sorted({r["length"] for r in rows}):
        pair = {r["mode"]: r for r in rows if r["length"] == length}
        if len(pair) == 2:
            print(f"{length}: chunked / whole, time {pair['chunked']['seconds'] / pair['whole']['seconds']:.2f}, "
                  f"peak {pair['chunked']['peak_gb'] / pair['whole']['peak_gb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
