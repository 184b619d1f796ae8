"""``ropestretch eval``: retrieval sweeps, perplexity vs length and lm-evaluation-harness on a checkpoint.

The subcommands and their options come from the task registry (:data:`ropestretch.eval.tasks.TASKS`)
and the backend registry (:data:`ropestretch.eval.backends.BACKENDS`); the sweep is the library's
:func:`ropestretch.eval.run`. This module parses and prints."""

from __future__ import annotations

import argparse

from ropestretch.cli import nonnegative_int, positive_int
from ropestretch.hardware import add_arguments as add_hardware

KEPT = "every finished cell stays in the run folder: rerun the same command to resume"  # after a write error


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"lengths must be positive integers, got {text!r}")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ropestretch.eval.tasks import TASKS

    p = sub.add_parser("eval", help="measure a model beyond its window (retrieval, perplexity, lm-eval)",
                       description="Evaluate a checkpoint at lengths beyond its original window. Results are "
                       "appended to RUN_DIR/results.jsonl cell by cell; a rerun with the same arguments skips "
                       "finished cells. `ropestretch report RUN_DIR` turns them into tables and figures.")
    tests = p.add_subparsers(dest="test", metavar="TEST", parser_class=type(p))
    tests.required = True
    for name, task in TASKS.items():  # one subcommand per registered task, its options declared by the task
        if task.suite is None:
            _add_task(tests.add_parser(name, help=task.help, description=f"{task.help}."), task)
    ruler = [t for t in TASKS.values() if t.suite == "ruler"]
    r = tests.add_parser("ruler", help=f"RULER's {len(ruler)} synthetic tasks, generated offline",
                         description=f"RULER's {len(ruler)} synthetic tasks (Hsieh et al. 2024), generated offline from a seed "
                         "and scored as RULER scores them (the share of the references in the generated text); "
                         "`ropestretch report` gives each task's score with its interval, RULER's average and the "
                         "effective length. See docs/evaluation.md.")
    r.add_argument("--tasks", default="all", metavar="TASKS",
                   help="all, niah, or comma-separated names: " + ", ".join(t.name for t in ruler))
    _add_task(r, ruler[0])
    r.set_defaults(run=run_suite, left_on_write_error=KEPT)
    lm = tests.add_parser("lm-eval", help="LongBench, RULER, short tasks via lm-evaluation-harness",
                          description="Run lm-evaluation-harness (lm_eval.simple_evaluate) on the checkpoint.")
    lm.add_argument("--model", required=True, metavar="MODEL", help="checkpoint folder, .gguf file, bundled model "
                    "name or hub id (online)")
    lm.add_argument("--out", required=True, metavar="RUN_DIR")
    lm.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    lm.add_argument("--include-path", metavar="DIR", help="folder of local task YAML files")
    lm.add_argument("--max-length", type=positive_int, help="context length (default: max_position_embeddings)")
    lm.add_argument("--batch-size", type=positive_int, default=1)
    lm.add_argument("--limit", type=float, help="examples per task (a count, or a fraction if < 1)")
    lm.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    add_hardware(lm)
    lm.set_defaults(run=run_lm_eval)


def _add_task(t: argparse.ArgumentParser, task) -> None:
    """A task's flags: the common ones and those it declares."""
    from ropestretch.eval.backends import BACKENDS

    t.add_argument("--model", required=True, metavar="MODEL",
                   help="checkpoint folder, .gguf file, bundled model name or hub id (online)")
    t.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for results")
    t.add_argument("--lengths", type=_int_list, metavar="L1,L2,...",
                   help="context lengths in tokens (default: the window doubling up to the target, or 1-8x)")
    for option in task.options:
        extra = {"choices": option.choices} if option.choices else {"type": option.parse, "metavar": option.metavar}
        t.add_argument("--" + option.name.replace("_", "-"), dest=option.name, default=None, help=option.help,
                       **extra)
    t.add_argument("--samples", type=positive_int, default=task.samples,
                   help=f"samples per cell (default {task.samples})")
    t.add_argument("--seed", type=nonnegative_int, default=0)
    if task.retrieval:
        t.add_argument("--scoring", choices=["forced", "generate"], default=None,
                       help="forced: one forward pass, argmax over the answer; generate: greedy, string match "
                       f"(default {task.scoring})")
        t.add_argument("--prompt", choices=["auto", "legacy", "base", "chat"], default="auto",
                       help="auto (chat when the tokenizer has a chat template, else base), base (standard "
                       "forms, instruction first), chat (the same as a user turn) or legacy (the tiny base's "
                       "pre-training wording); see docs/evaluation.md")
    t.add_argument("--batch-size", type=positive_int, default=8)
    t.add_argument("--text", metavar="PATH", help=task.text_help)
    t.add_argument("--backend", choices=list(BACKENDS), default="transformers",
                   help="; ".join(f"{b}: {cls.help}" for b, cls in BACKENDS.items()))
    t.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="N",
                   help="with --backend vllm: the GPUs to split the model over (recorded)")
    add_attention(t)
    t.add_argument("--trust-remote-code", action="store_true")
    add_hardware(t)
    t.add_argument("--no-progress", dest="progress", action="store_false")
    t.set_defaults(run=run, left_on_write_error=KEPT)


def add_attention(parser: argparse.ArgumentParser) -> None:
    """``--attention`` and each method's own options, from the registry (:mod:`ropestretch.attention`)."""
    from ropestretch.attention import ATTENTION_METHODS

    parser.add_argument("--attention", choices=["none", *ATTENTION_METHODS], default="none",
                        help="training-free attention at inference: " + "; ".join(
                            f"{name}: {m.help} ({m.paper})" for name, m in ATTENTION_METHODS.items()))
    for method in ATTENTION_METHODS.values():
        for option in method.options:
            parser.add_argument("--" + option.name.replace("_", "-"), dest=f"attention_{option.name}", default=None,
                                type=option.parse, metavar=option.metavar, help=option.help)


def attention_request(args: argparse.Namespace) -> dict:
    """The method's options from the parsed flags; a flag of another method is one line."""
    from ropestretch.attention import ATTENTION_METHODS
    from ropestretch.errors import UsageError

    given = {k[len("attention_"):]: v for k, v in vars(args).items() if k.startswith("attention_") and v is not None}
    for name, method in ATTENTION_METHODS.items():
        for option in method.options:
            if option.name in given and args.attention != name:
                raise UsageError(f"--{option.name.replace('_', '-')} goes with --attention {name}")
    return given


def run(args: argparse.Namespace) -> int:
    """Parse, run :func:`ropestretch.eval.run`, print each finished cell."""
    from ropestretch.eval.tasks import TASKS

    return _evaluate(args, args.test, TASKS[args.test].options)


def run_suite(args: argparse.Namespace) -> int:
    """``eval ruler``: the chosen tasks one after the other on one loaded model."""
    from ropestretch.data.ruler import select

    return _evaluate(args, select(args.tasks), ())


def _evaluate(args: argparse.Namespace, tasks, options) -> int:
    import json

    from ropestretch.eval import run as evaluate

    attention = attention_request(args)
    rows = evaluate(tasks, args.model, args.out, lengths=args.lengths, samples=args.samples, seed=args.seed,
                    text=args.text, scoring=getattr(args, "scoring", None), prompt=getattr(args, "prompt", "auto"),
                    batch_size=args.batch_size, backend=args.backend, tensor_parallel_size=args.tensor_parallel_size,
                    device=args.device, dtype=args.dtype, device_map=args.device_map,
                    attn_implementation=args.attn_implementation, trust_remote_code=args.trust_remote_code,
                    progress=args.progress, attention=args.attention, attention_options=attention,
                    **{o.name: getattr(args, o.name) for o in options})
    for record in rows:
        value = f"ppl {record['ppl']:.2f}" if "ppl" in record else f"accuracy {record['accuracy']:.2f}"
        if record.get("score") is not None:
            value += f", score {100 * record['score']:.1f}"
        print(f"{record['test']} {json.dumps(record['cell'])}: {value}")
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ropestretch.checkpoints import resolve_model
    from ropestretch.eval.lmeval import run_lm_eval as go
    from ropestretch.hardware import placement

    from ropestretch.paths import named_path, outside

    where = placement(args.device, args.dtype, args.device_map, args.attn_implementation)
    named_path(args.out, "--out")
    model_dir = resolve_model(args.model)  # fail in one line for a missing model, before lm-eval starts
    outside(args.out, {"model folder": model_dir}, "--out")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    summary = go(str(model_dir), tasks, Path(args.out), max_length=args.max_length, include_path=args.include_path,
                 batch_size=args.batch_size, limit=args.limit, backend=args.backend, placement=where)
    for task, metrics in summary["results"].items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}
        print(f"{task}: {shown}")
    return 0
