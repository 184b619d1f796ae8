"""Where retrieval answers go wrong: accuracy of the whole value, and of each answer token on its
own (teacher-forced), over many samples.

    python benchmarks/answer_errors.py [--task lines|needle] [--model models/tiny-llama-256]
        [--length 256] [--samples 200] [--seed 7]

LongChat-Lines: a wrong first value token means the model found the wrong line; a wrong later one,
a copying slip among the other lines' digits. Needle: each sample its own haystack, city and
7-digit number, placed at a depth drawn uniformly; a wrong later digit is a copying slip, and
the whole number's accuracy is split by whether the number repeats a digit, and by how many other
digits the haystack holds.
``--model`` may be a `ropestretch pretrain --cache` phase folder (each holds its tokenizer), to
follow the recipe phase by phase, or a demo's ``models/<variant>`` (any length).
"""

import argparse

import numpy as np
import torch

from ropestretch.data import tasks
from ropestretch.data.corpus import builtin_documents
from ropestretch.data.tasks import Haystack
from ropestretch.eval import load_for_eval
from ropestretch.eval.scoring import forced_scores


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("lines", "needle"), default="lines")
    parser.add_argument("--model", default="models/tiny-llama-256")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_for_eval(args.model)
    rng = np.random.default_rng(args.seed)
    if args.task == "lines":
        samples = [tasks.lines(tok, args.length, rng) for _ in range(args.samples)]
    else:
        haystack = Haystack(tok, builtin_documents())
        samples = [tasks.needle_draw(tok, haystack, args.length, rng).at(float(rng.uniform(0, 100)))
                   for _ in range(args.samples)]
    pad = tok.pad_token_id or 0
    right = np.array([hits for start in range(0, len(samples), 10)
                      for hits in (s.hits for s in forced_scores(model, samples[start:start + 10], pad))])
    print(f"{args.model}: {args.task} at {args.length}, {args.samples} samples")
    whole = right.all(axis=1)
    print(f"value right: {whole.mean():.1%}")
    print("per answer token (the first is the space): " + ", ".join(f"{a:.0%}" for a in right.mean(axis=0)))
    if args.task == "needle":  # copying a digit that the number holds twice: which occurrence comes next?
        numbers = [tok.decode(s.answer_ids).strip() for s in samples]
        twice = np.array([any(a == b for a, b in zip(n, n[1:])) for n in numbers])
        repeat = np.array([len(set(n)) < len(n) for n in numbers])
        for name, mask in (("a digit twice in a row", twice), ("some digit twice", repeat),
                           ("all digits distinct", ~repeat)):
            value = f"{whole[mask].mean():.1%}" if mask.any() else "-"
            print(f"numbers with {name}: {value} right ({mask.sum()} samples)")
        # other digits in the haystack (the prose's own numbers): do they lure the copy away?
        digit_ids = set(tok.convert_tokens_to_ids(list("0123456789")))
        others = np.array([sum(t in digit_ids for t in s.prompt_ids) - len(n) for s, n in zip(samples, numbers)])
        for low, high in ((0, 1), (1, 6), (6, 15), (15, 30), (30, None)):
            mask = (others >= low) & (others < (high or np.inf))
            value = f"{whole[mask].mean():.1%}" if mask.any() else "-"
            span = f"{low} or more" if high is None else str(low) if high == low + 1 else f"{low}-{high - 1}"
            print(f"haystack holding {span} other digits: {value} right ({mask.sum()} samples)")


if __name__ == "__main__":
    main()
