"""``ropestretch apply``: a copy of a checkpoint with a scaling in its config, no training."""

from __future__ import annotations

import argparse

from ropestretch.cli import finite_float, nonnegative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply",
        help="write a copy of a local checkpoint with a RoPE scaling in its config (no training)",
        description="Copy a checkpoint (a folder, a GGUF file dequantized once, or a hub model) to --out with the "
        "chosen RoPE scaling written into "
        "config.json (rope_parameters for transformers 5, rope_scaling for 4.x and vLLM) and a "
        "ropestretch.json record. Stock transformers loads the result with no custom code. From a .gguf file to an "
        "--out ending in .gguf, the GGUF file is copied for llama.cpp and Ollama instead: every tensor, quantized "
        "or not, unchanged, and the RoPE metadata (and, for per-pair factors, the rope_freqs tensor) rewritten.",
    )
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model folder, .gguf file, bundled model name (smollm2-135m-instruct) or hub id (online)")
    p.add_argument("--scaling", required=True, metavar="NAME", help="none, linear, ntk, dynamic, yarn or dprope")
    p.add_argument("--target", required=True, type=positive_int, metavar="L", help="target context length")
    p.add_argument("--out", required=True, metavar="DIR", help="new output folder (must not exist, or be empty); "
                   "or, from a .gguf model, a new .gguf file")
    p.add_argument("--bins", type=int, default=360, metavar="B", help="dprope: histogram bins (default 360)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=finite_float, metavar="T", help="dprope: selection threshold (default 0)")
    group.add_argument("--n-hat", type=nonnegative_int, metavar="K", help="dprope: interpolate exactly K dimensions")
    p.add_argument("--beta-fast", type=finite_float, metavar="B", help="yarn: pairs turning more than B times over "
                   "the window extrapolate (default 32)")
    p.add_argument("--beta-slow", type=finite_float, metavar="B", help="yarn: pairs turning fewer than B times over "
                   "the window interpolate (default 1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ropestretch.checkpoints import resolve_model
    from ropestretch.errors import UsageError
    from ropestretch.rope import load_config_dict, rope_config_from_dict, scale
    from ropestretch.rope.export import apply_to_checkpoint, engine_notes

    source = _gguf_source(args.model) if str(args.out).lower().endswith(".gguf") else None  # before dequantizing
    model = resolve_model(args.model)
    rope = rope_config_from_dict(load_config_dict(model))
    options = {}
    if args.scaling == "dprope":
        options = dict(bins=args.bins, threshold=args.threshold, n_hat=args.n_hat)
    elif args.threshold is not None or args.n_hat is not None:
        raise UsageError("--threshold and --n-hat apply to --scaling dprope only")
    if args.scaling == "yarn":
        options = {k: v for k, v in (("beta_fast", args.beta_fast), ("beta_slow", args.beta_slow)) if v is not None}
    elif args.beta_fast is not None or args.beta_slow is not None:
        raise UsageError("--beta-fast and --beta-slow apply to --scaling yarn only")
    scaled = scale(rope, args.scaling, args.target, **options)
    if source is not None:
        return _to_gguf(args, source, scaled)
    out = apply_to_checkpoint(model, args.out, scaled, command="apply", model=args.model)
    print(f"wrote {out}: {args.scaling} scaling, window {rope.window} -> {args.target}, exported as "
          f"{scaled.exported.rope_type}" + (f" on top of the model's {rope.rope_type}" if scaled.composed else ""))
    for note in engine_notes(scaled):
        print(f"note: {note}")
    return 0


def _gguf_source(model: str):
    """The .gguf file a GGUF output is copied from, or one line on why there is none."""
    from pathlib import Path

    from ropestretch.checkpoints import BUNDLED, bundled_file, is_gguf
    from ropestretch.errors import UsageError
    import gguf

    from ropestretch.rope.llamacpp import writable_architecture

    if model in BUNDLED:
        source = bundled_file(model)
    elif is_gguf(model) and Path(model).is_file():
        source = Path(model)
    else:
        raise UsageError(f"--out ending in .gguf copies a .gguf model; {model} is not one (a checkpoint folder is "
                         "written as a folder)")
    writable_architecture(gguf.GGUFReader(str(source)), source.name)
    return source


def _to_gguf(args: argparse.Namespace, source, scaled) -> int:
    from ropestretch.resources import new_file
    from ropestretch.rope.llamacpp import gguf_rope, write_scaled_gguf

    gguf_rope(scaled)  # what llama.cpp cannot express is refused before anything is written
    out = new_file(args.out, ".gguf", "--out")
    rope = write_scaled_gguf(source, out, scaled)
    shown = ", ".join(f"{k} {v}" for k, v in rope.keys.items())
    extra = f", rope_freqs ({len(rope.freq_factors)} per-pair divisors)" if rope.freq_factors is not None else ""
    print(f"wrote {out}: {args.scaling} scaling, window {scaled.rope.window} -> {args.target} for llama.cpp ({shown}{extra})")
    return 0
