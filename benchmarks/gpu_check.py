"""The GPU check: one script of at most 8 minutes for the day a machine with CUDA is lent.

    python benchmarks/gpu_check.py            # on a CUDA machine; elsewhere it says so and exits 0

On a random-weight Llama of about 1B parameters built on the GPU (no download):

1. train-step time (forward, backward, AdamW) in bf16 at N = 4096: plain positions, CREAM
   positions (same tokens, positions spanning 8N), and full-length fine-tuning at 8N, with the ratios
   CREAM / plain and full / CREAM (the cost CREAM saves);
2. bf16 prefill through the KV cache (ropestretch's chunked prefill, sdpa) at 32K, 64K and 128K
   tokens: peak GPU memory beside the weights + KV-cache lower bound, and tokens per second;
3. that ropestretch's YaRN export computes the same cos/sin on the GPU as on the CPU.

It prints one JSON line per measurement and a summary; a step that does not fit reports OOM and
the script goes on.
"""

from __future__ import annotations

import json
import sys
import time

DEADLINE_S = 7.5 * 60


def llama_1b(target: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0,
                         tie_word_embeddings=False)
    from ropestretch.rope import rope_config_from_dict, scale
    from ropestretch.rope.export import exported_config

    scaled = scale(rope_config_from_dict(config.to_dict()), "yarn", target)
    config = LlamaConfig(**{k: v for k, v in exported_config(config.to_dict(), scaled).items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model, scaled


def step_time(model, ids, positions, steps: int = 3) -> float:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    times = []
    for i in range(steps + 1):
        torch.cuda.synchronize()
        started = time.time()
        loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i:  # the first step warms up kernels
            times.append(time.time() - started)
    del optimizer
    return sum(times) / len(times)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to measure (exit 0)")
        return 0
    begun = time.time()
    from ropestretch.eval.prefill import new_cache, prefill
    from ropestretch.positions import sample_positions

    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}), flush=True)
    n, target = 4096, 32768
    model, scaled = llama_1b(target)
    params = sum(p.numel() for p in model.parameters())
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, 32000, (1, n), device="cuda")
    results = {}
    for name, method in (("plain", "none"), ("cream", "cream")):
        positions = sample_positions(method, 1, n, target, seed=0).cuda()
        results[name] = step_time(model, ids, positions)
        print(json.dumps({"train_step": name, "tokens": n, "seconds": round(results[name], 3)}), flush=True)
    try:
        long = torch.randint(0, 32000, (1, target), device="cuda")
        results["full"] = step_time(model, long, torch.arange(target, device="cuda")[None], steps=2)
        print(json.dumps({"train_step": "full", "tokens": target, "seconds": round(results["full"], 3)}), flush=True)
    except torch.cuda.OutOfMemoryError:
        print(json.dumps({"train_step": "full", "tokens": target, "error": "OOM"}), flush=True)
    torch.cuda.empty_cache()
    model.gradient_checkpointing_disable()
    model.eval()
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    for length in (32768, 65536, 131072):
        if time.time() - begun > DEADLINE_S - 90:
            print(json.dumps({"prefill": length, "skipped": "time"}), flush=True)
            continue
        kv = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * length * 2
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            prompt = torch.randint(0, 32000, (1, length), device="cuda")
            torch.cuda.synchronize()
            started = time.time()
            prefill(model, prompt, new_cache(model), chunk=4096)
            torch.cuda.synchronize()
            seconds = time.time() - started
            peak = torch.cuda.max_memory_allocated()
            results[f"prefill_{length}"] = {"seconds": seconds, "ratio": peak / (weights + kv)}
            print(json.dumps({"prefill": length, "seconds": round(seconds, 2), "tokens_per_s": round(length / seconds),
                              "peak_gb": round(peak / 2**30, 2), "weights_kv_gb": round((weights + kv) / 2**30, 2),
                              "ratio": round(peak / (weights + kv), 3)}), flush=True)
        except torch.cuda.OutOfMemoryError:
            print(json.dumps({"prefill": length, "error": "OOM"}), flush=True)
        finally:
            prompt = None
    rotary = model.model.rotary_emb
    pos = torch.arange(0, target, 997, device="cuda")[None]
    cos_gpu, _ = rotary(torch.zeros(1, device="cuda", dtype=torch.float32), pos)
    freqs = pos.cpu()[..., None].float() * scaled.inv_freq
    cos_cpu = torch.cat([freqs, freqs], -1).cos() * scaled.attention_factor
    print(json.dumps({"yarn_cos_max_abs_diff_gpu_vs_cpu": float((cos_gpu.float().cpu() - cos_cpu).abs().max())}))
    summary = {"params_b": round(params / 1e9, 2), "seconds": round(time.time() - begun, 1)}
    if "plain" in results and "cream" in results:
        summary["cream_over_plain"] = round(results["cream"] / results["plain"], 3)
    if "full" in results:
        summary["full_over_cream"] = round(results["full"] / results["cream"], 2)
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
