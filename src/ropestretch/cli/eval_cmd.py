"""``ropestretch eval``: retrieval sweeps, perplexity vs length and lm-evaluation-harness on a checkpoint."""

from __future__ import annotations

import argparse

from ropestretch.cli import nonnegative_int, positive_int
from ropestretch.hardware import add_arguments as add_hardware

DEFAULT_SAMPLES = {"passkey": 20, "needle": 10, "lines": 50, "kv": 20, "ppl": 8}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"lengths must be positive integers, got {text!r}")
    return values


def _float_list(low: float, high: float, what: str):
    def parse(text: str) -> list[float]:
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values or any(not low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"{what} must lie in [{low:g}, {high:g}], got {text!r}")
        return values
    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a model beyond its window (retrieval, perplexity, lm-eval)",
                       description="Evaluate a checkpoint at lengths beyond its original window. Results are "
                       "appended to RUN_DIR/results.jsonl cell by cell; a rerun with the same arguments skips "
                       "finished cells. `ropestretch report RUN_DIR` turns them into tables and figures.")
    tests = p.add_subparsers(dest="test", metavar="TEST", parser_class=type(p))
    tests.required = True
    helps = {"passkey": "pass key retrieval, lengths x depths", "needle": "needle in a haystack, lengths x depths",
             "lines": "LongChat-Lines, by length", "kv": "key-value retrieval, lengths x gold positions",
             "ppl": "perplexity vs length"}
    for name, text in helps.items():
        t = tests.add_parser(name, help=text, description=f"{text}.")
        t.add_argument("--model", required=True, metavar="MODEL",
                       help="checkpoint folder, .gguf file, bundled model name or hub id (online)")
        t.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for results")
        t.add_argument("--lengths", type=_int_list, metavar="L1,L2,...",
                       help="context lengths in tokens (default: the window doubling up to the target, or 1-8x)")
        if name in ("passkey", "needle"):
            t.add_argument("--depths", type=_float_list(0, 100, "depths"), metavar="D1,D2,...",
                           help="needle depths in percent (default: 10 from 0 to 100)")
        if name == "kv":
            t.add_argument("--positions", type=_float_list(0, 1, "gold positions"), default=[0, 0.25, 0.5, 0.75, 1.0],
                           metavar="P1,P2,...", help="queried key's place in the object, 0 = first, 1 = last")
        if name == "ppl":
            t.add_argument("--mode", choices=["truncate", "sliding"], default="truncate")
            t.add_argument("--stride", type=positive_int, help="sliding mode: window step (default length / 2)")
        t.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES[name],
                       help=f"samples per cell (default {DEFAULT_SAMPLES[name]})")
        t.add_argument("--seed", type=nonnegative_int, default=0)
        if name != "ppl":
            t.add_argument("--scoring", choices=["forced", "generate"], default="forced",
                           help="forced: one forward pass, argmax over the answer; generate: greedy, string match")
            t.add_argument("--prompt", choices=["auto", "legacy", "base", "chat"], default="auto",
                           help="auto (chat when the tokenizer has a chat template, else base), base (standard "
                           "forms, instruction first), chat (the same as a user turn) or legacy (the tiny base's "
                           "pre-training wording); see docs/evaluation.md")
        t.add_argument("--batch-size", type=positive_int, default=8)
        t.add_argument("--text", metavar="PATH", help="haystack / perplexity text: a file or folder "
                       "(default: the English that ships with Python)")
        t.add_argument("--trust-remote-code", action="store_true")
        add_hardware(t)
        t.add_argument("--no-progress", dest="progress", action="store_false")
        t.set_defaults(run=run)
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


def default_lengths(model: str) -> list[int]:
    """The window doubling up to the target for a ropestretch checkpoint, else 1x to 8x its window."""
    from pathlib import Path

    from ropestretch.errors import UsageError
    from ropestretch.jsonl import read_json

    meta = Path(model) / "ropestretch.json"
    if meta.is_file():
        record = read_json(meta, "a ropestretch model record")
        n, target = (record.get("window"), record.get("target")) if isinstance(record, dict) else (None, None)
    else:
        config = read_json(Path(model) / "config.json", "a model config") if (Path(model) / "config.json").is_file() else {}
        n = config.get("max_position_embeddings", 2048) if isinstance(config, dict) else None
        target = 8 * n if isinstance(n, int) else None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 24 for v in (n, target)):
        raise UsageError(f"cannot tell {model}'s window and target for the default lengths; pass --lengths")
    lengths = [n]
    while lengths[-1] < target:
        lengths.append(min(target, lengths[-1] * 2))
    return lengths


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ropestretch.checkpoints import resolve_model
    from ropestretch.data.corpus import load_records
    from ropestretch.data.prompts import prompt_format
    from ropestretch.errors import UsageError
    from ropestretch.eval import RunStore, load_eval_tokenizer, load_for_eval
    from ropestretch.eval.store import run_arguments
    from ropestretch.hardware import placement
    from ropestretch.resources import folder_lock, named_path, outside

    # everything that can be wrong is checked before the run folder is touched
    where = placement(args.device, args.dtype, args.device_map, args.attn_implementation)
    named_path(args.out, "--out")
    model_dir = resolve_model(args.model)  # a missing folder, a bad GGUF, an unreachable hub: one line
    # before the lock, so nothing is left in either; results inside the text folder would become haystack
    outside(args.out, {"model folder": model_dir, "text folder": args.text or None}, "--out")
    lengths = args.lengths or default_lengths(model_dir)
    depths = getattr(args, "depths", None) or [round(float(x), 1) for x in np.linspace(0, 100, 10)]
    if args.text is not None and not args.text.strip():
        raise UsageError("--text is empty; give a text file or folder, or leave --text out for the built-in prose")
    if args.text and not Path(args.text).exists():
        raise UsageError(f"no such text file or folder: {args.text}")
    tokenizer = load_eval_tokenizer(str(model_dir), args.trust_remote_code)
    prompt = prompt_format(tokenizer, args.prompt) if args.test != "ppl" else None
    settings = run_arguments(args.test, args.model, lengths, args.samples, args.seed, args.text, depths,
                             getattr(args, "positions", None), getattr(args, "scoring", "forced"),
                             getattr(args, "mode", "truncate"), getattr(args, "stride", None),
                             prompt.name if prompt else None, dtype=where.dtype, folder=args.out)
    documents = None
    if args.text:
        records = load_records(args.text)
        if "text" not in records.column_names:
            raise UsageError(f"{args.text} has no 'text' field")
        documents = [t for t in records["text"] if isinstance(t, str) and t.strip()]
        if not documents:
            raise UsageError(f"{args.text} holds no usable text")
    batch = fitting_batch(model_dir, max(lengths), args.batch_size if args.test != "ppl" else 1, where)
    with folder_lock(args.out, "eval"):
        store = RunStore(args.out, args.test, settings)  # refuses a folder of other arguments
        model, tokenizer = load_for_eval(str(model_dir), args.trust_remote_code, where)
        return _sweep(args, store, model, tokenizer, prompt, documents, lengths, depths, batch)


def fitting_batch(model_dir, length: int, batch: int, where) -> int:
    """The largest batch up to ``batch`` whose KV cache at ``length`` fits beside the weights; a
    request that does not fit even one sample is refused with its estimate."""
    from pathlib import Path

    from ropestretch.resources import available_memory, check_fits, kv_cache_bytes

    from ropestretch.jsonl import read_json

    config = read_json(Path(model_dir) / "config.json", "a model config")
    weights = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    per_sample = kv_cache_bytes(config, length, 2 if where.dtype in ("bf16", "fp16") else 4)
    if where.device != "cpu":  # on a GPU the host only holds the weights once
        return batch
    check_fits(weights + per_sample, f"one {length}-token sample (weights and KV cache)")
    room = int(0.8 * available_memory()) - weights
    return max(1, min(batch, room // max(1, per_sample)))


def _sweep(args, store, model, tokenizer, prompt, documents, lengths, depths, batch) -> int:
    import json

    from tqdm.auto import tqdm

    from ropestretch.data.corpus import builtin_documents
    from ropestretch.data.tasks import Haystack
    from ropestretch.eval import Evaluator, run_kv, run_lines, run_needle, run_passkey, run_ppl, token_stream

    cells = {"passkey": len(lengths) * len(depths), "needle": len(lengths) * len(depths), "lines": len(lengths),
             "kv": len(lengths) * len(getattr(args, "positions", [0])), "ppl": len(lengths)}[args.test]
    bar = tqdm(total=cells, desc=f"eval {args.test}", unit="cell", disable=not args.progress)
    ev = Evaluator(model, tokenizer, getattr(args, "scoring", "forced"), batch, progress=bar, prompt=prompt)
    if args.test in ("passkey", "needle"):
        ev.haystack = Haystack(tokenizer, documents)
    if args.test == "passkey":
        run_passkey(ev, store, lengths, depths, args.samples, args.seed)
    elif args.test == "needle":
        run_needle(ev, store, lengths, depths, args.samples, args.seed)
    elif args.test == "lines":
        run_lines(ev, store, lengths, args.samples, args.seed)
    elif args.test == "kv":
        run_kv(ev, store, lengths, args.positions, args.samples, args.seed)
    else:
        stream = token_stream(tokenizer, documents or builtin_documents())
        run_ppl(ev, store, stream, lengths, args.samples, args.seed, args.mode, args.stride)
    bar.close()
    for record in store.done.values():
        value = f"ppl {record['ppl']:.2f}" if "ppl" in record else f"accuracy {record['accuracy']:.2f}"
        print(f"{args.test} {json.dumps(record['cell'])}: {value}")
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ropestretch.checkpoints import resolve_model
    from ropestretch.eval.lmeval import run_lm_eval as go
    from ropestretch.hardware import placement

    from ropestretch.resources import named_path, outside

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
