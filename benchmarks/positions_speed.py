"""Sampler throughput and collator overhead, measured in one run (ratios, not timed tests).

    python benchmarks/positions_speed.py [--window 4096] [--target 32768]

Targets (issue 3): at least 50,000 samples/s at N = 4096 on one core; the collator adds at most
1% to a training step of a small model.
"""

import argparse
import time

import numpy as np
import torch

from ropestretch.positions import SAMPLERS, PositionCollator


def rate(fn, samples, repeats=5):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return samples / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--target", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1024, help="samples per sampler call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, L, b = args.window, args.target, args.batch
    print(f"one core, N = {n}, L = {L}, {b} samples per call (best of 5)")
    for name in ("cream", "pose", "randpos", "none"):
        gen = torch.Generator().manual_seed(0)
        r = rate(lambda name=name, gen=gen: SAMPLERS[name](b, n, L, gen), b)
        print(f"  {name:<8} {r:>12,.0f} samples/s   ({r / 50000:.1f}x the 50,000/s target)")

    # collator overhead inside a training step of a small Llama (window 512, batch 8)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    window, batch = 512, 8
    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=2048, max_position_embeddings=window)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(0, 2048, window).tolist(), "sample_id": i} for i in range(batch)]
    collate = PositionCollator("cream", window, 8 * window, seed=0)

    def step(batch_):
        loss = model(**batch_).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    ready = collate(rows)
    step(ready)  # warm-up
    t_collate = min(_timed(lambda: collate(rows)) for _ in range(20))
    t_step = min(_timed(lambda: step(ready)) for _ in range(5))
    print(f"\nsmall Llama (4 layers, hidden 256, batch {batch} x {window} tokens, 1 thread):")
    print(f"  training step {1000 * t_step:.1f} ms, collator {1000 * t_collate:.2f} ms "
          f"-> collator adds {100 * t_collate / t_step:.2f}% (target <= 1%)")


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
