"""``ropestretch apply``: a copy of a checkpoint with a scaling in its config, no training."""

from __future__ import annotations

import argparse

from ropestretch.attention import EXPORT_HELP

from ropestretch.cli import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ropestretch.options import add_registry_flags
    from ropestretch.rope.scalings import SCALING_OPTIONS, SCALINGS

    p = sub.add_parser(
        "apply",
        help="write a copy of a local checkpoint with a RoPE scaling in its config (no training)",
        description="Copy a checkpoint (a folder, a GGUF file dequantized once, or a hub model) to --out with the "
        "chosen RoPE scaling written into "
        "config.json (rope_parameters for transformers 5, rope_scaling for 4.x and vLLM) and a "
        "ropestretch.json record. Stock transformers loads the result with no custom code. To an --out ending in "
        ".gguf, a GGUF file for llama.cpp and Ollama is written instead: from a .gguf model, a copy with every "
        "tensor, quantized or not, unchanged, and the RoPE metadata (and, for per-pair factors, the rope_freqs "
        "tensor) rewritten; from a checkpoint folder, the applied checkpoint converted as `ropestretch gguf` does.",
    )
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model folder, .gguf file, bundled model name (smollm2-135m-instruct) or hub id (online)")
    p.add_argument("--scaling", required=True, metavar="NAME", help=", ".join(SCALINGS))
    p.add_argument("--target", required=True, type=positive_int, metavar="L", help="target context length")
    p.add_argument("--out", required=True, metavar="DIR", help="new output folder (must not exist, or be empty); "
                   "or, from a .gguf model, a new .gguf file")
    p.add_argument("--type", choices=["f16", "q8_0", "f32"], metavar="TYPE",
                   help="a checkpoint folder to an --out ending in .gguf: its weights as f16 (default), q8_0 or f32 "
                   "(as `ropestretch gguf`)")
    add_registry_flags(p.add_argument_group("each scaling's options (SCALING: ...)"), SCALING_OPTIONS)
    p.add_argument("--attention", default="none", metavar="METHOD", help=EXPORT_HELP)
    p.set_defaults(run=run, left_on_write_error="nothing was written (the partial output was removed)")


def run(args: argparse.Namespace) -> int:
    from ropestretch.attention import refuse_export
    from ropestretch.checkpoints import resolve_model
    from ropestretch.errors import UsageError
    from ropestretch.rope import load_config_dict, rope_config_from_dict, scale
    from ropestretch.options import chosen_options
    from ropestretch.rope.export import apply_to_checkpoint, engine_notes
    from ropestretch.gguf.write import writable_source
    from ropestretch.rope.scalings import SCALING_OPTIONS

    refuse_export(args.attention)

    to_gguf = str(args.out).lower().endswith(".gguf")
    source = writable_source(args.model) if to_gguf else None  # before dequantizing
    if args.type and source is not None:
        raise UsageError("--type converts a checkpoint folder; a .gguf model keeps its tensors as they are")
    if args.type and not to_gguf:
        raise UsageError("--type applies to an --out ending in .gguf")
    model = resolve_model(args.model)
    rope = rope_config_from_dict(load_config_dict(model))
    options = chosen_options(SCALING_OPTIONS, args.scaling, vars(args), "--scaling")
    scaled = scale(rope, args.scaling, args.target, **options)
    if source is not None:
        return _to_gguf(args, source, scaled)
    if to_gguf:
        return _folder_to_gguf(args, model, scaled)
    out = apply_to_checkpoint(model, args.out, scaled, command="apply", model=args.model)
    print(f"wrote {out}: {args.scaling} scaling, window {rope.window} -> {args.target}, exported as "
          f"{scaled.exported.rope_type}" + (f" on top of the model's {rope.rope_type}" if scaled.composed else ""))
    for note in engine_notes(scaled):
        print(f"note: {note}")
    return 0


def _to_gguf(args: argparse.Namespace, source, scaled) -> int:
    from ropestretch.paths import new_file
    from ropestretch.gguf.keys import gguf_rope
    from ropestretch.gguf.write import write_scaled_gguf

    gguf_rope(scaled)  # what llama.cpp cannot express is refused before anything is written
    out = new_file(args.out, ".gguf", "--out", create=False)
    path, reader = source
    rope = write_scaled_gguf(path, out, scaled, reader=reader)
    shown = ", ".join(f"{k} {v}" for k, v in rope.keys.items())
    extra = f", rope_freqs ({len(rope.freq_factors)} per-pair divisors)" if rope.freq_factors is not None else ""
    print(f"wrote {out}: {args.scaling} scaling, window {scaled.rope.window} -> {args.target} for llama.cpp ({shown}{extra})")
    return 0


def _folder_to_gguf(args: argparse.Namespace, model, scaled) -> int:
    """The applied checkpoint as GGUF: its config with the scaling, its weights and tokenizer read
    from ``model`` (nothing copied)."""
    from pathlib import Path

    from ropestretch.cli.gguf_cmd import describe
    from ropestretch.gguf.convert import write_gguf
    from ropestretch.paths import new_file
    from ropestretch.rope import load_config_dict
    from ropestretch.rope.export import exported_config

    out = new_file(args.out, ".gguf", "--out", reading={"model": model}, create=False)
    config = exported_config(load_config_dict(model), scaled)
    name = f"{Path(str(args.model).rstrip('/')).name} {args.scaling} {args.target}"
    print(describe(out, write_gguf(model, out, args.type or "f16", config=config, name=name)))
    return 0
