"""``ropestretch gguf``: a checkpoint folder (fine-tuned, applied or stock) as one GGUF file."""

from __future__ import annotations

import argparse

from ropestretch.attention import EXPORT_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ropestretch.gguf.convert import TYPES

    p = sub.add_parser(
        "gguf",
        help="write a checkpoint (fine-tuned, applied or stock) as one GGUF file for llama.cpp and Ollama",
        description="Write a transformers checkpoint of the Llama architecture (Llama, Mistral without a sliding "
        "window, SmolLM) as a new GGUF file, with exactly the RoPE transformers runs for it: yarn and linear as "
        "llama.cpp's own scalings, ntk as its base, and per-pair RoPEs (dprope, Llama 3.1's llama3, composed "
        "exports) in the rope_freqs tensor. What llama.cpp cannot run (dynamic, an attention factor beside "
        "per-pair frequencies) is refused. The tokenizer must be byte-level BPE (Llama 3, Qwen, SmolLM, GPT-2).",
    )
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="checkpoint folder (e.g. a `ropestretch train` or `apply` output), bundled model name or hub "
                   "id (online)")
    p.add_argument("--out", required=True, metavar="FILE", help="new .gguf file (never overwritten)")
    p.add_argument("--type", default="f16", choices=TYPES,
                   help="weight type: f16 (default), q8_0 (8-bit blocks, half the size) or f32 (exact, for checks)")
    p.add_argument("--attention", default="none", metavar="METHOD", help=EXPORT_HELP)
    p.set_defaults(run=run, left_on_write_error="nothing was written (the partial file was removed)")


def run(args: argparse.Namespace) -> int:
    from ropestretch.attention import refuse_export
    from ropestretch.checkpoints import resolve_model
    from ropestretch.gguf.convert import write_gguf
    from ropestretch.paths import new_file

    refuse_export(args.attention)

    model = resolve_model(args.model)
    out = new_file(args.out, ".gguf", "--out", reading={"model": model}, create=False)
    print(describe(out, write_gguf(model, out, args.type)))
    return 0


def describe(out, written: dict) -> str:
    rope = ", ".join(f"{k} {v}" for k, v in written["rope"].items())
    extra = ", rope_freqs per-pair divisors" if written["rope_freqs"] else ""
    return (f"wrote {out}: {written['tensors']} tensors as {written['type']}, {written['bytes'] / 2**20:.1f} MiB, "
            f"{written['architecture']} architecture, {written['pre_tokenizer']} pre-tokenizer; RoPE: {rope}{extra}")
