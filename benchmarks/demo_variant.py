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
        [--experiment answer-loss|whole-numbers|train-only:self_attn|repeat-digits:0.5]

One training's needle accuracy at 2048 moves by several points with the training seed, so compare
settings over more than one ``--train-seed``. ``--model`` skips training and measures a model
folder (a demo's ``models/<variant>``).

``--experiment`` tests a hypothesis about the needle that no training setting expresses, by
wrapping the training run (this script only; the library has no such options):

- ``answer-loss``: retrieval rows (those that end in a number and end-of-text) count only their
  answer in the loss; prose rows keep their full loss;
- ``whole-numbers``: a row's position ids are drawn again (up to 100 times) while a jump between
  segments falls inside a run of digit tokens, so no pass key, needle number or line value is cut;
- ``train-only:NAME[,NAME]``: only parameters whose names contain one of the NAMEs train
  (``self_attn``; ``q_proj,k_proj``), the rest stay frozen;
- ``repeat-digits:P``: in the training rows (not the evaluation's), a share ``P`` of the numbers
  (needle numbers, pass keys, line values) draw their digits from 2 to 4 distinct digits, so
  nearly all repeat one: the slip the needle loses most to (``answer_errors.py``).
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


def install_experiment(name: str) -> None:
    """Wrap the position collator or the trainer for ``--experiment`` (see the module's docstring)."""
    import transformers

    from ropestretch import positions
    from ropestretch.demo import BASE_MODEL

    if name.startswith("repeat-digits:"):
        from ropestretch import demo
        from ropestretch.data import tasks

        try:
            share = float(name.split(":", 1)[1])
        except ValueError:
            share = -1.0
        if not 0 <= share <= 1:
            raise ValueError(f"--experiment {name!r}: repeat-digits takes a share from 0 to 1, as repeat-digits:0.5")
        uniform, rows = tasks._digits, demo.training_rows

        def digits(rng, n):  # n digits from a small alphabet, the first not 0
            if rng.random() >= share:
                return uniform(rng, n)
            alphabet = rng.choice(10, size=int(rng.integers(2, 5)), replace=False)
            out = rng.choice(alphabet, size=n)
            while out[0] == 0:
                out[0] = rng.choice(alphabet)
            return "".join(map(str, out))

        def training_rows(*args, **kwargs):
            tasks._digits = digits
            try:
                return rows(*args, **kwargs)
            finally:
                tasks._digits = uniform

        demo.training_rows = training_rows
        return
    if name not in ("answer-loss", "whole-numbers") and not name.startswith("train-only:"):
        raise ValueError(f"unknown --experiment {name!r}: answer-loss, whole-numbers, train-only:NAME[,NAME] "
                         "or repeat-digits:P")
    tok = transformers.AutoTokenizer.from_pretrained(BASE_MODEL)
    digits, eos_id = torch.tensor(tok.convert_tokens_to_ids(list("0123456789"))), tok.eos_token_id
    collate = positions.PositionCollator.__call__

    def answer_loss(self, features):
        out = collate(self, features)
        for row, n in enumerate(out["attention_mask"].sum(1).tolist()):
            ids = out["input_ids"][row]
            if ids[n - 1] != eos_id or not torch.isin(ids[n - 2], digits):
                continue  # prose
            start = n - 2
            while start > 0 and torch.isin(ids[start - 1], digits):
                start -= 1
            out["labels"][row, :start] = -100
        return out

    def whole_numbers(self, features):
        out = collate(self, features)
        gen = torch.Generator().manual_seed(int(out["position_ids"].sum()))  # a new stream per batch
        for row in range(out["input_ids"].shape[0]):
            ids, pos = out["input_ids"][row], out["position_ids"][row]
            in_number = torch.isin(ids[1:], digits) & torch.isin(ids[:-1], digits)
            for _ in range(100):
                if not ((pos[1:] - pos[:-1] > 1) & in_number).any():
                    break
                pos = positions.SAMPLERS[self.method](1, self.window, self.target, gen, **self.options)[0, :len(ids)]
            out["position_ids"][row] = pos
        return out

    if name in ("answer-loss", "whole-numbers"):
        positions.PositionCollator.__call__ = answer_loss if name == "answer-loss" else whole_numbers
    else:  # train-only:NAME[,NAME]
        keep = name.split(":", 1)[1].split(",")
        init = transformers.Trainer.__init__

        def frozen_init(self, model=None, *args, **kwargs):
            for param_name, param in model.named_parameters():
                param.requires_grad = any(k in param_name for k in keep)
            init(self, model, *args, **kwargs)

        transformers.Trainer.__init__ = frozen_init


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
    parser.add_argument("--experiment", help="answer-loss, whole-numbers, train-only:NAME[,NAME] or repeat-digits:P (see above)")
    args = parser.parse_args()
    if not args.out and not args.model:
        parser.error("give --out (train) or --model (measure)")
    if args.experiment and args.model:
        parser.error("--experiment changes the training; it does not apply to --model")
    if args.experiment:
        try:
            install_experiment(args.experiment)
        except ValueError as err:
            parser.error(str(err))
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
    print(f"{path}: {json.dumps(changes) if args.model is None else ''} {args.experiment or ''} "
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
