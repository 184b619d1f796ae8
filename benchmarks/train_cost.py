"""Training cost of CREAM at the window vs plain fine-tuning at the window vs full-length
fine-tuning at 8x and 16x, measured in one run (each variant in its own process, for its peak memory).

    python benchmarks/train_cost.py [--window 256] [--batch 4] [--steps 6]

Step = forward + backward + AdamW update of a small Llama (4 layers, hidden 256) on a batch of
`--batch` rows, rows built by ropestretch's PositionCollator. Target (issue 4): CREAM / plain <= 1.02
in step time; full-length / CREAM shows the saving CREAM exists for.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def small_llama(window, target):
    """The benchmark's model (4 layers, hidden 256, linear scaling to the target) and its AdamW."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=2048, max_position_embeddings=target,
                         rope_parameters={"rope_type": "linear", "factor": target / window, "rope_theta": 10000.0})
    model = LlamaForCausalLM(config)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def one(method, window, target, batch, steps, threads):
    import numpy as np
    import torch
    from ropestretch.positions import PositionCollator, sample_length

    torch.set_num_threads(threads)
    model, opt = small_llama(window, target)
    length = sample_length(method, window, target)
    collate = PositionCollator(method, window, target, seed=0, **({"k": 8} if method == "cream" else {}))
    rng = np.random.default_rng(0)
    times = []
    for step in range(steps + 2):
        rows = [{"input_ids": rng.integers(0, 2048, length).tolist(), "sample_id": step * batch + i}
                for i in range(batch)]
        start = time.perf_counter()
        loss = model(**collate(rows)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "tokens_per_row": length, "step_s": statistics.median(times), "peak_mb": peak_mb}


def interleaved(window, target, batch, steps, threads):
    """Plain and CREAM steps alternated on one model in one process: a ratio free of machine drift."""
    import numpy as np
    import torch
    from ropestretch.positions import PositionCollator

    torch.set_num_threads(threads)
    model, opt = small_llama(window, target)
    collators = {"none": PositionCollator("none", window, target, seed=0),
                 "cream": PositionCollator("cream", window, target, seed=0, k=8)}
    rng = np.random.default_rng(0)
    times = {"none": [], "cream": []}
    for step in range(2 * steps + 4):
        method = "none" if step % 2 == 0 else "cream"
        rows = [{"input_ids": rng.integers(0, 2048, window).tolist(), "sample_id": step * batch + i}
                for i in range(batch)]
        start = time.perf_counter()
        model(**collators[method](rows)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 4:
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        method, target = args._one[0], int(args._one[1])
        print(json.dumps(one(method, args.window, target, args.batch, args.steps, args.threads)))
        return
    n = args.window
    variants = [("none", 8 * n, "plain at N"), ("cream", 8 * n, "CREAM at N (L = 8N)"),
                ("full", 8 * n, "full length at 8N"), ("full", 16 * n, "full length at 16N")]
    results = []
    for method, target, label in variants:
        out = subprocess.run([sys.executable, __file__, "--window", str(n), "--batch", str(args.batch),
                              "--steps", str(args.steps), "--threads", str(args.threads),
                              "--_one", method, str(target)], capture_output=True, text=True, check=True)
        results.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    cream = results[1][1]
    print(f"small Llama (4 layers, hidden 256), batch {args.batch}, window N = {n}, {args.threads} threads, "
          f"median of {args.steps} steps")
    print("separate processes (peak memory is each process's maximum RSS):")
    print(f"{'variant':<22}{'tokens/row':>11}{'step s':>9}{'peak MB':>9}{'time / CREAM':>14}{'mem / CREAM':>13}")
    for label, r in results:
        print(f"{label:<22}{r['tokens_per_row']:>11}{r['step_s']:>9.3f}{r['peak_mb']:>9.0f}"
              f"{r['step_s'] / cream['step_s']:>14.2f}{r['peak_mb'] / cream['peak_mb']:>13.2f}")
    paired = interleaved(n, 8 * n, args.batch, 4 * args.steps, args.threads)
    print(f"\nCREAM / plain step time: {paired['cream'] / paired['none']:.3f} (target <= 1.02; "
          f"{4 * args.steps} steps each, alternated on one model in one process: "
          f"{paired['cream']:.3f} s vs {paired['none']:.3f} s)")


if __name__ == "__main__":
    main()
