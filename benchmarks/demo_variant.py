"""Tune the demo's fine-tuning: train one demo variant under changed plan settings, then measure its
needle accuracy at the window and at the target over several evaluation seeds, and its passkey at
the target.

    python benchmarks/demo_variant.py --out /tmp/try-mix [--variant cream-yarn]
        [--mix '{"text": 0.1, "passkey": 0.15, "needle": 0.6, "lines": 0.15}']
        [--steps 250] [--batch 16] [--lr 5e-4] [--warmup 10] [--schedule cosine]
        [--train-options '{"lora": true, "lora_rank": 16}']
        [--scaling-options '{"yarn": {}}']   # the YaRN paper's defaults (the demo's: beta_fast 16)
        [--train-seed 0] [--eval-seeds 0,1,2]
        [--distill 1]   # the demo's: 0 (off)
        [--needles 1]   # needles per needle row, at most (the demo's: 3)

One training's needle accuracy at 2048 moves by several points with the training seed, so compare
settings over more than one ``--train-seed``. ``--model`` skips training and measures a model
folder (a demo's ``models/<variant>``).

The experiments that wrapped the training loop (``--experiment answer-loss``, ``whole-numbers``,
``train-only:NAME``, ``repeat-digits:P``; docs/demo/findings.md) patched library classes and are
not kept here: they are ``git show 4905af6:benchmarks/demo_variant.py``.
"""

import argparse
import json
import tempfile
from dataclasses import replace

import numpy as np
import torch

from ropestretch.data.corpus import builtin_documents
from ropestretch.data.tasks import Haystack
from ropestretch.demo import Demo, DemoPlan
from ropestretch.errors import UsageError
from ropestretch.eval import Evaluator, RunStore, load_for_eval, run_needle, run_passkey


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="a new folder for the trained variant (a demo folder of this plan)")
    parser.add_argument("--model", help="measure this model folder instead of training one")
    parser.add_argument("--variant", default="cream-yarn", help="positions-scaling, as the demo names them")
    parser.add_argument("--mix", type=json.loads, help="fine-tuning mix, JSON (default: the demo's)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch", type=int, help="rows per step at the window")
    parser.add_argument("--warmup", type=int, help="linear warm-up steps")
    parser.add_argument("--train-options", type=json.loads,
                        help="more training settings: JSON of ropestretch train's fields (not those above)")
    parser.add_argument("--distill", type=float, help="short-to-long distillation weight (default: the demo's, 0: off)")
    parser.add_argument("--scaling-options", type=json.loads,
                        help="options per scaling, JSON (default: the demo's, {\"yarn\": {\"beta_fast\": 16}})")
    parser.add_argument("--needles", type=int,
                        help="needle rows hold 1 to this many needles, each asked (default: the demo's, 3)")
    parser.add_argument("--schedule", help="learning-rate schedule, transformers' names (cosine, linear, ...)")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--eval-seeds", default="0,1,2")
    parser.add_argument("--samples", type=int, default=20, help="per depth and evaluation seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.out and not args.model:
        parser.error("give --out (train) or --model (measure)")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    plan_fields = ("mix", "steps", "batch", "lr", "warmup", "schedule", "train_options", "scaling_options", "distill",
                   "needles")
    changes = {k: getattr(args, k) for k in plan_fields if getattr(args, k) is not None}
    plan = replace(DemoPlan(), seed=args.train_seed, **changes)
    path = args.model
    try:
        if path is None:
            positions, scaling = args.variant.split("-")
            path = Demo(args.out, plan, progress=False).train(positions, scaling)
        model, tok = load_for_eval(str(path))
    except UsageError as err:  # a bad plan value, --out or --model: one line, exit 2
        parser.error(str(err))
    ev = Evaluator(model, tok, "forced", batch_size=10, haystack=Haystack(tok, builtin_documents()))
    depths, seeds = plan.depths, [int(s) for s in args.eval_seeds.split(",")]
    print(f"{path}: {json.dumps(changes) if args.model is None else ''} "
          f"train seed {args.train_seed}")
    for length in (plan.window, plan.target):
        every, middle, per_seed = [], [], []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                cells = run_needle(ev, RunStore(tmp, "needle", {}), [length], depths, args.samples, seed)
            accs = [c["accuracy"] for c in cells]
            every += accs
            middle += [c["accuracy"] for c in cells if 25 <= c["cell"]["depth"] <= 75]
            per_seed.append(f"{100 * np.mean(accs):.0f}%")
        print(f"  needle @{length}: {100 * np.mean(every):.1f}% over {len(seeds)} eval seeds ({', '.join(per_seed)}); "
              f"depths 25-75%: {100 * np.mean(middle):.1f}%")
    with tempfile.TemporaryDirectory() as tmp:
        cells = run_passkey(ev, RunStore(tmp, "passkey", {}), [plan.target], depths, args.samples, seeds[0])
    print(f"  passkey @{plan.target}: {100 * np.mean([c['accuracy'] for c in cells]):.1f}% (eval seed {seeds[0]})")


if __name__ == "__main__":
    main()
