"""Needle-sweep throughput: prefix reuse vs scoring each cell from scratch vs a bare forward pass
over the same prompts (the floor: one forward pass per sample), measured in one run.

    python benchmarks/eval_speed.py [--model models/tiny-llama-256] [--length 2048] [--samples 8]

Target (issue 5): the needle sweep with prefix reuse reaches at least 1.3x the throughput of
scoring each cell from scratch.
"""

import argparse
import tempfile
import time

import torch

from ropestretch.data.tasks import Haystack
from ropestretch.eval import Evaluator, RunStore, load_for_eval, run_needle
from ropestretch.eval.retrieval import cell_rng, needle_prompts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/tiny-llama-256")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--depths", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=0,
                        help="instead of the model's weights, a random Llama of this width (4 layers, head dim 64) "
                             "with the model's tokenizer: proportions closer to real LLMs, where attention over "
                             "the context does not dominate the cost")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_for_eval(args.model)
    if args.hidden:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden,
                                             intermediate_size=int(2.75 * args.hidden), num_hidden_layers=4,
                                             num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                                             max_position_embeddings=256)).eval()
    depths = [round(100 * i / (args.depths - 1), 1) for i in range(args.depths)]
    ev = Evaluator(model, tok, "forced", batch_size=args.samples, haystack=Haystack(tok))
    n = args.depths * args.samples
    timings = {}
    for reuse in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            store = RunStore(tmp, "needle", {"reuse": reuse})
            start = time.perf_counter()
            results = run_needle(ev, store, [args.length], depths, args.samples, seed=0, reuse_prefix=reuse)
            timings[reuse] = (time.perf_counter() - start, [r["accuracy"] for r in results])
    # the floor: one bare forward pass per prompt, same prompts, batched by length as the evaluator does
    draws = needle_prompts(ev, args.length, args.samples, cell_rng(0, "needle", args.length))
    start = time.perf_counter()
    with torch.no_grad():
        for d in depths:
            rows: dict[int, list[list[int]]] = {}
            for draw in draws:
                row = draw.at(d).prompt_ids + draw.answer_ids
                rows.setdefault(len(row), []).append(row)
            for same in rows.values():
                model(input_ids=torch.tensor(same), use_cache=False)
    bare = time.perf_counter() - start
    assert timings[True][1] == timings[False][1], "prefix reuse changed the results"
    what = f"random Llama, hidden {args.hidden}, 4 layers" if args.hidden else args.model
    print(f"needle sweep: {args.depths} depths x {args.samples} samples at length {args.length}, "
          f"{args.threads} threads, model {what}")
    for name, seconds in (("prefix reuse", timings[True][0]), ("from scratch", timings[False][0]),
                          ("bare forward", bare)):
        print(f"  {name:<13} {seconds:7.2f} s   {n / seconds:7.2f} samples/s")
    print(f"prefix reuse / from scratch throughput: {timings[False][0] / timings[True][0]:.2f}x (target >= 1.3x); "
          f"vs bare forward: {bare / timings[True][0]:.2f}x; identical accuracies per depth: yes")


if __name__ == "__main__":
    main()
