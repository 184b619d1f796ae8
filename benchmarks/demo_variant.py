"""Tune the demo's fine-tuning: train one demo variant under changed plan settings (the demo's plan,
examples/studies/demo.yaml, with the changes below), then measure its needle accuracy at the window
and at the target over several evaluation seeds, and its passkey at the target.

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
folder (a demo's ``models/<variant>``). The changed plan is written to ``<out>/plan.yaml``.

The experiments that wrapped the training loop (``--experiment answer-loss``, ``whole-numbers``,
``train-only:NAME``, ``repeat-digits:P``; docs/demo/findings.md) patched library classes and are
not kept here: they are ``git show 4905af6:benchmarks/demo_variant.py``.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from ropestretch.errors import UsageError
from ropestretch.study import load_plan, merged, model_path, read_plan

PLAN = Path(__file__).resolve().parents[1] / "examples" / "studies" / "demo.yaml"


def changed_plan(args) -> dict:
    """The demo's plan mapping with the command line's changes (the token budget kept as steps x batch x window)."""
    data = read_plan(PLAN)
    data["model"] = str(PLAN.parents[2] / data["model"])
    window = data["texts"]["train"]["length"]
    training = dict(data["training"])
    for flag, key in (("steps", "steps"), ("batch", "batch_size"), ("lr", "lr"), ("warmup", "warmup_steps"),
                      ("schedule", "schedule"), ("distill", "distill")):
        if getattr(args, flag) is not None:
            training[key] = getattr(args, flag)
    training.update(args.train_options or {})
    training["seed"] = args.train_seed
    budget = training["steps"] * training["batch_size"] * window
    for text in data["texts"].values():
        text.update(seed=args.train_seed, count=budget // text["length"])
        if args.mix is not None:
            text["mix"] = args.mix
        if args.needles is not None:
            text["needles"] = args.needles
    full = data["variants"]["full-linear"]
    full["training"] = {"batch_size": max(1, training["batch_size"] // 8), "distill": 0.0}
    if args.scaling_options is not None:  # options per scaling, for the applied and the fine-tuned variants alike
        for spec in data["variants"].values():
            options = args.scaling_options.get(spec.get("scaling"))
            if options is None:
                continue
            if "positions" in spec:
                kept = {k: v for k, v in spec.get("training", {}).items() if not k.startswith(spec["scaling"] + "_")}
                spec["training"] = {**kept, **{f"{spec['scaling']}_{k}": v for k, v in options.items()}}
            else:
                spec["options"] = dict(options)
    return merged(data, {"name": "demo-variant", "training": training})


def rate(out: Path, task: str, model: Path, length: int, seed: int, samples: int, depths) -> dict[float, float]:
    """Accuracy by depth, as the demo evaluates (forced scoring, legacy prompts, the built-in prose)."""
    from ropestretch.eval import run

    rows = run(task, str(model), out, lengths=[length], samples=samples, seed=seed, depths=list(depths),
               scoring="forced", prompt="legacy", batch_size=10, dtype="fp32")
    return {r["cell"]["depth"]: r["accuracy"] for r in rows if r["cell"]["length"] == length}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="a new folder for the trained variant")
    parser.add_argument("--model", help="measure this model folder instead of training one")
    parser.add_argument("--variant", default="cream-yarn", help="a fine-tuned variant of the demo's plan")
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
    data = changed_plan(args)
    path = args.model
    try:
        if path is None:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
            plan = load_plan(out / "plan.yaml")
            if not plan.fine_tuned(args.variant):
                parser.error(f"--variant {args.variant} is not a fine-tuned variant of the demo's plan")
            path = model_path(plan, out, args.variant)
    except UsageError as err:  # a bad plan value or --out: one line, exit 2
        parser.error(str(err))
    depths, seeds = data["evaluation"]["depths"], [int(s) for s in args.eval_seeds.split(",")]
    window, target = data["texts"]["train"]["length"], data["target"]
    print(f"{path}: train seed {args.train_seed}")
    with tempfile.TemporaryDirectory() as tmp:
        for length in (window, target):
            every, middle, per_seed = [], [], []
            for seed in seeds:
                accs = rate(Path(tmp) / f"needle-{length}-{seed}", "needle", path, length, seed, args.samples, depths)
                every += list(accs.values())
                middle += [a for d, a in accs.items() if 25 <= d <= 75]
                per_seed.append(f"{100 * np.mean(list(accs.values())):.0f}%")
            print(f"  needle @{length}: {100 * np.mean(every):.1f}% over {len(seeds)} eval seeds "
                  f"({', '.join(per_seed)}); depths 25-75%: {100 * np.mean(middle):.1f}%")
        accs = rate(Path(tmp) / "passkey", "passkey", path, target, seeds[0], args.samples, depths)
    print(f"  passkey @{target}: {100 * np.mean(list(accs.values())):.1f}% (eval seed {seeds[0]})")


if __name__ == "__main__":
    main()
