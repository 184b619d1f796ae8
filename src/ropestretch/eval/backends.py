"""Evaluation backends: the engine a task's prompts run in (:data:`BACKENDS`).

A backend does the operations a task needs from a model, on token ids that the project's own
tokenizer made (so every backend is asked the same prompts, fingerprint for fingerprint):

- :meth:`Backend.score`: each prompt's gold answer scored, teacher-forced (right when the argmax at
  every answer position is the answer's token) or by greedy generation and string match; either way
  with the answer's log-likelihood;
- :meth:`Backend.nll`: the summed negative log-likelihood of windows of text (perplexity);
- :meth:`Backend.score_draw`: one needle draw at several depths (a backend that can reuse the
  haystack's prefix does; the others score each placement, an engine with prefix caching reusing it
  by itself).

``transformers`` runs the checkpoint in this process (chunked prefill, the prefix reused across
depths: :mod:`ropestretch.eval.prefill`); ``vllm`` runs it in vLLM's offline ``LLM`` (greedy
``SamplingParams``, ``prompt_logprobs`` for the answer, ``--tensor-parallel-size`` for a model that
needs several GPUs); ``llamacpp`` runs a ``.gguf`` file in llama-cpp-python (the file ``apply`` or
``gguf`` wrote), its logits giving the answer's likelihood. The engines live in the engines venv
(``make engines``); elsewhere asking for one is one line naming it.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from typing import Any

from ropestretch.errors import UsageError


def check_backend(name: str):
    """The backend class for ``name``, its engine importable, or one line saying what to install."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    cls = BACKENDS[name]
    if cls.module and importlib.util.find_spec(cls.module) is None:
        raise UsageError(f"--backend {name} needs {cls.package}; run ropestretch from .venv-engines "
                         f"(`make engines` builds it)")
    return cls


def _scored(correct: bool, answer_logprobs: Sequence[float], hits: Sequence[bool], share: float | None = None):
    from ropestretch.eval.scoring import Scored

    return Scored(bool(correct), float(sum(answer_logprobs)), len(answer_logprobs), tuple(bool(h) for h in hits),
                  share)


class Backend:
    """What a task needs from a model. ``tokenizer`` is the checkpoint's (a transformers tokenizer).

    A registry entry (:data:`BACKENDS`) is a subclass with its ``name``, ``help``, the engine's import
    name (``module``, None for this project's own dependencies) and what installs it (``package``),
    and an :meth:`open` that builds it from the request. Its primitives are :meth:`predictions`
    (teacher-forced) and :meth:`generate` (greedy); :meth:`score` and :meth:`nll` are built on them,
    and a backend with a faster way overrides them."""

    name = "backend"
    help = ""
    module: str | None = None
    package: str | None = None
    tokenizer: Any
    reuses_prefix = False  # whether :meth:`score_draw` computes a draw's shared prefix once

    @classmethod
    def open(cls, *, model_dir, tokenizer, placement, max_len: int, gguf_file: str | None = None,
             tensor_parallel_size: int = 1, trust_remote_code: bool = False) -> Backend:
        """The backend on a model: the checkpoint folder ``model_dir`` (transformers, vLLM), placed as
        ``placement`` (a :class:`ropestretch.hardware.Placement`), or the ``.gguf`` file (llama.cpp),
        for prompts of up to ``max_len`` tokens with their answers."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    @classmethod
    def notes(cls, model_dir, max_len: int) -> list[str]:
        """Where this engine does not run the checkpoint's RoPE as transformers does, one line each
        (docs/engines.md); the evaluation prints them and records them with the run."""
        return []

    def describe(self) -> str:
        return f"{self.name} {self.version()}"

    def pad(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)

    def predictions(self, sequences: Sequence[Sequence[int]], start: int) -> list[list[tuple[float, int]]]:
        """Per sequence, for each token from position ``start`` (>= 1) on: its log-probability given
        the tokens before it, and the token the model ranks first there."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]) -> list[str]:
        """Greedy continuations of ``prompts``, each at most its budget of tokens, decoded."""
        raise NotImplementedError

    def score(self, samples, scoring: str, batch_size: int = 1) -> list:
        """Each sample's answer scored: forced (the argmax at every answer position is the answer's
        token) or by greedy generation and the task's string match; with its log-likelihood."""
        forced = []
        for s in samples:
            [rows] = self.predictions([list(s.prompt_ids) + list(s.answer_ids)], len(s.prompt_ids))
            forced.append(([lp for lp, _ in rows], [top == t for (_, top), t in zip(rows, s.answer_ids)]))
        if scoring == "forced":
            return [_scored(all(hits), lps, hits) for lps, hits in forced]
        texts = self.generate([s.prompt_ids for s in samples], [s.max_new_tokens for s in samples])
        verdicts = [s.judge(text) for s, text in zip(samples, texts)]
        return [_scored(correct, lps, hits, share) for (correct, share), (lps, hits) in zip(verdicts, forced)]

    def nll(self, windows: Sequence[Sequence[int]], scored_from: int = 0) -> tuple[list[float], int]:
        """Per window, the summed negative log-likelihood of tokens ``scored_from + 1 ..``; and how many
        tokens each window scores."""
        rows = [self.predictions([w], scored_from + 1)[0] for w in windows]
        return [-sum(lp for lp, _ in r) for r in rows], len(rows[0]) if rows else 0

    def score_draw(self, draw, depths: Sequence[float], scoring: str) -> dict[float, tuple[Any, float]]:
        """One needle draw placed at each of ``depths``: per depth, its score and the seconds it took."""
        out = {}
        for depth in depths:
            started = time.time()
            out[depth] = (self.score([draw.at(depth)], scoring)[0], time.time() - started)
        return out

    def close(self) -> None:
        """Free the engine (a backend that holds processes or GPU memory)."""


class TransformersBackend(Backend):
    """A transformers model in this process."""

    name = "transformers"
    help = "the checkpoint in this process (the default)"

    @classmethod
    def open(cls, *, model_dir, placement, trust_remote_code=False, **_):
        from ropestretch.eval.loading import load_for_eval

        return cls(*load_for_eval(str(model_dir), trust_remote_code, placement))

    def __init__(self, model, tokenizer):
        from ropestretch.eval.prefill import can_crop, new_cache

        self.model, self.tokenizer = model, tokenizer
        self.reuses_prefix = can_crop(new_cache(model))

    def version(self) -> str:
        import transformers

        return transformers.__version__

    def predictions(self, sequences, start):
        import torch

        from ropestretch.eval.prefill import answer_logits

        device = next(self.model.parameters()).device
        out = []
        for seq in sequences:
            seq = list(seq)
            with torch.no_grad():
                logits = answer_logits(self.model, torch.tensor([seq[:start]], device=device),
                                       torch.tensor([seq[start:]], device=device))[0]
            logp = torch.log_softmax(logits.float(), -1).cpu()
            gold = torch.tensor(seq[start:])
            out.append(list(zip(logp[torch.arange(len(gold)), gold].tolist(), logp.argmax(-1).tolist())))
        return out

    def generate(self, prompts, budgets):
        import torch

        from ropestretch.eval.prefill import new_cache
        from ropestretch.eval.scoring import generate_after

        device = next(self.model.parameters()).device
        return [generate_after(self.model, self.tokenizer, torch.tensor([list(p)], device=device), new_cache(self.model),
                               [b], self.pad())[0] for p, b in zip(prompts, budgets)]

    def score(self, samples, scoring: str, batch_size: int = 1) -> list:
        """Prompts of one length batched; one chunked prefill serves the answer's score and the
        generation (:mod:`ropestretch.eval.scoring`)."""
        from ropestretch.eval.scoring import forced_scores, generated_scores

        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            by_length.setdefault(len(s.prompt_ids), []).append(i)
        scored: list = [None] * len(samples)
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch = [samples[i] for i in chunk]
                if scoring == "forced":
                    result = forced_scores(self.model, batch, self.pad())
                else:
                    result, _ = generated_scores(self.model, self.tokenizer, batch, pad=self.pad())
                for i, one in zip(chunk, result):
                    scored[i] = one
        return scored

    def nll(self, windows, scored_from: int = 0) -> tuple[list[float], int]:
        """Chunked prefill with logits only where tokens are scored (:func:`ropestretch.eval.prefill.row_nll`)."""
        import torch

        from ropestretch.eval.prefill import row_nll

        return row_nll(self.model, torch.tensor([list(w) for w in windows]), scored_from)

    def score_draw(self, draw, depths, scoring):
        """The haystack before the deepest needle prefilled once and cropped for each shallower depth,
        so each depth only runs what follows its needle."""
        if not self.reuses_prefix:
            return super().score_draw(draw, depths, scoring)
        import torch

        from ropestretch.eval.prefill import crop_to, new_cache, prefill

        order = sorted(depths, key=lambda d: -draw.cut(d))  # deepest cut first: crop, never copy
        started = time.time()
        deepest = draw.prefix(order[0])
        cache = new_cache(self.model)
        device = next(self.model.parameters()).device
        if deepest:
            with torch.no_grad():
                prefill(self.model, torch.tensor([deepest], device=device), cache)
        share = (time.time() - started) / len(order)
        out = {}
        for depth in order:
            started = time.time()
            cut = draw.cut(depth)
            prefix = draw.prefix(depth)
            crop_to(cache, len(prefix))
            rest = draw.needle + draw.context[cut:] + draw.question
            out[depth] = (self._continuation(cache, prefix, rest, draw, scoring), share + time.time() - started)
        return out

    def _continuation(self, cache, prefix, rest, draw, scoring):
        """Score ``prefix + rest``, whose ``prefix`` is in ``cache``; the cache is left at the prefix."""
        import torch

        from ropestretch.data.tasks import TaskSample
        from ropestretch.eval.scoring import Scored, forced_scores, generate_scored

        device = next(self.model.parameters()).device
        with torch.no_grad():
            if scoring == "forced":
                return forced_scores(self.model, [TaskSample(draw.task, rest, draw.answer, draw.answer_ids)], self.pad(),
                                     cache=cache)[0]
            full = torch.tensor([prefix + rest], device=device)
            [(hits, logprob)], [text] = generate_scored(self.model, self.tokenizer, full, [draw.answer_ids], cache,
                                                        self.pad())
        return Scored(draw.match(draw.answer, text), logprob, len(hits), hits)


class VllmBackend(Backend):
    """vLLM's offline ``LLM`` on a checkpoint folder. The prompts go in as token ids;
    ``prompt_logprobs`` over prompt + answer give each answer token's log-probability and the top
    token there; greedy ``SamplingParams`` give the text. Prefix caching reuses a haystack shared by
    several prompts. ``max_model_len`` covers the longest prompt with its answer budget."""

    name = "vllm"
    help = "vLLM's offline LLM on the checkpoint folder (GPUs, tensor parallelism)"
    module, package = "vllm", "vllm (the engines venv: make engines)"

    @classmethod
    def open(cls, *, model_dir, tokenizer, placement, max_len, tensor_parallel_size=1, trust_remote_code=False, **_):
        import os
        from pathlib import Path

        if placement.device == "cpu":
            from ropestretch.jsonl import read_json

            space = cpu_kv_space(read_json(Path(model_dir) / "config.json", "a model config"), max_len, os.environ)
            if space is not None:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = _WROTE_KV_SPACE["value"] = space
        try:
            return cls(model_dir, tokenizer, placement.dtype, max_len, tensor_parallel_size=tensor_parallel_size,
                       trust_remote_code=trust_remote_code)
        except (ValueError, RuntimeError) as err:
            from ropestretch.errors import first_line

            raise UsageError(f"vLLM cannot run {model_dir}: {first_line(err)}") from None

    def __init__(self, model_dir, tokenizer, dtype: str, max_len: int, **options):
        """``options`` go to ``vllm.LLM`` (``tensor_parallel_size``, ``enforce_eager``, ...)."""
        import os

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        self.tokenizer = tokenizer
        options.update(_vllm_length(model_dir, max_len))
        self.llm = LLM(model=str(model_dir), dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
                       max_model_len=max_len, seed=0, enable_prefix_caching=True, **options)

    def version(self) -> str:
        import vllm

        return vllm.__version__

    @classmethod
    def notes(cls, model_dir, max_len: int) -> list[str]:
        from pathlib import Path

        from ropestretch.jsonl import read_json

        return vllm_notes(read_json(Path(model_dir) / "config.json", "a model config"), max_len)

    def predictions(self, sequences, start):
        from vllm import SamplingParams

        outs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences],
                                 SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False),
                                 use_tqdm=False)
        result = []
        for seq, out in zip(sequences, outs):
            rows = []
            for j in range(start, len(seq)):
                entry = out.prompt_logprobs[j]  # the token at j and the top-ranked one, given tokens < j
                top = min(entry, key=lambda t: (entry[t].rank, t))
                rows.append((float(entry[seq[j]].logprob), int(top)))
            result.append(rows)
        return result

    def generate(self, prompts, budgets):
        from vllm import SamplingParams

        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts],
                                 [SamplingParams(max_tokens=b, temperature=0.0) for b in budgets], use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


_WROTE_KV_SPACE = {"value": None}  # what open() last put in VLLM_CPU_KVCACHE_SPACE


def cpu_kv_space(config: dict, max_len: int, environ) -> str | None:
    """The ``VLLM_CPU_KVCACHE_SPACE`` (GiB) for prompts of up to ``max_len`` tokens, or None to leave the
    variable as it is. vLLM's CPU build sizes its KV cache from the machine's memory unless told: on
    24 GB it took the whole of it at an 8K prompt and was killed. One sequence's keys and values, twice
    over. A value the user set stays; one this process wrote for a shorter run is recomputed."""
    import math

    from ropestretch.eval.loading import kv_cache_bytes

    held = environ.get("VLLM_CPU_KVCACHE_SPACE")
    if held is not None and held != _WROTE_KV_SPACE["value"]:
        return None
    return str(max(1, math.ceil(2 * kv_cache_bytes(config, max_len) / 2**30)))


def _vllm_length(model_dir, max_len: int) -> dict:
    """vLLM's options for prompts of up to ``max_len`` tokens. vLLM tabulates RoPE up to the length it
    derives from the config (a scaled RoPE's: its scaling's), refuses a longer ``max_model_len`` and,
    forced past it, gives NaN. An unscaled RoPE's frequencies do not depend on the length, so its
    table is extended; a scaled one is left to vLLM's own check (one line, through :meth:`open`)."""
    from pathlib import Path

    from ropestretch.jsonl import read_json
    from ropestretch.rope.config import text_section

    config = text_section(read_json(Path(model_dir) / "config.json", "a model config"))
    window = config.get("max_position_embeddings")
    if isinstance(window, int) and max_len > window and _rope_parameters(config).get("rope_type") == "default":
        return {"hf_overrides": {"max_position_embeddings": max_len}}
    return {}


def _rope_parameters(config) -> dict:
    """A config's (text section's) RoPE scaling with its ``rope_type`` (``default`` when unscaled)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    params = dict(params) if isinstance(params, dict) else {}
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def vllm_notes(config, max_len: int) -> list[str]:
    """What vLLM runs differently from transformers for a checkpoint served to ``max_len`` tokens
    (measured on vLLM 0.32's CPU build, docs/engines.md): ``dynamic`` at the unscaled base with only
    the window's positions cached (the same as transformers within the window); a length-switching
    ``longrope`` at its long factors at every length once ``max_model_len`` passes the switch."""
    from ropestretch.rope.config import text_section

    section = text_section(config)
    params = _rope_parameters(section)
    window = section.get("max_position_embeddings")
    if params["rope_type"] == "dynamic" and not (isinstance(window, int) and max_len <= window):
        return ["vLLM does not run dynamic NTK at transformers' frequencies: it keeps the unscaled base and caches "
                "only the window's positions (log-probs turn NaN past it); its answers here are not what "
                "transformers gives (export with --scaling ntk or yarn for vLLM)"]
    original = params.get("original_max_position_embeddings")
    if params["rope_type"] == "longrope" and params.get("short_factor") != params.get("long_factor") \
            and isinstance(original, int) and max_len > original:
        return [f"vLLM picks longrope's factors once from max_model_len ({max_len} > {original}): it runs the long "
                f"factors at every length, where transformers runs the short ones up to {original} tokens"]
    return []


class LlamaCppBackend(Backend):
    """llama-cpp-python on a ``.gguf`` file. Logits come from ``eval`` with every position kept
    (``logits_all``); the KV of a sequence's common prefix with the previous one is kept and reused,
    so a needle draw's placements share their haystack's prefix."""

    name = "llamacpp"
    help = "llama.cpp (llama-cpp-python) on a .gguf file"
    module, package = "llama_cpp", "llama-cpp-python (the engines venv: make engines)"

    @classmethod
    def open(cls, *, gguf_file, tokenizer, max_len, **_):
        if gguf_file is None:
            raise UsageError("--backend llamacpp runs a .gguf file: pass the file apply or gguf wrote as --model")
        return cls(gguf_file, tokenizer, max_len)

    def __init__(self, gguf_file, tokenizer, max_len: int, **options):
        """``options`` go to ``llama_cpp.Llama`` (``type_k``, ``type_v``, ``n_threads``, ...)."""
        import os

        from llama_cpp import Llama

        self.tokenizer = tokenizer
        options = {"n_threads": os.cpu_count() or 2, "n_batch": 512, **options}
        self.llm = Llama(model_path=str(gguf_file), n_ctx=max_len, logits_all=True, verbose=False, seed=0, **options)

    def version(self) -> str:
        import llama_cpp

        return llama_cpp.__version__

    def _evaluate(self, ids: list[int], start: int) -> None:
        """Make the context hold ``ids``, the logits of positions ``start - 1 ..`` computed now (the
        cached tokens before that reused)."""
        held = list(self.llm.input_ids[: self.llm.n_tokens])
        keep = 0
        while keep < min(len(held), len(ids), start - 1) and held[keep] == ids[keep]:
            keep += 1
        self.llm.n_tokens = keep
        self.llm.eval(ids[keep:])

    def predictions(self, sequences, start):
        import numpy as np

        out = []
        for seq in sequences:
            seq = list(seq)
            self._evaluate(seq[:-1], start)
            rows = []
            for block in range(start - 1, len(seq) - 1, 1024):  # float32 rows a block at a time: bounded memory
                scores = np.asarray(self.llm.scores[block:min(len(seq) - 1, block + 1024)], dtype=np.float32)
                peak = scores.max(-1, keepdims=True)
                norm = peak[:, 0] + np.log(np.exp(scores - peak).sum(-1))
                targets = seq[block + 1:block + 1 + len(scores)]
                rows += [(float(scores[k, t] - norm[k]), int(scores[k].argmax())) for k, t in enumerate(targets)]
            out.append(rows)
        return out

    def generate(self, prompts, budgets):
        texts = []
        for prompt, budget in zip(prompts, budgets):
            tokens = []
            # greedy; generate() reuses the longest prefix it already holds
            stop = {self.llm.token_eos(), self.tokenizer.eos_token_id}  # the chat template's end of turn too
            for token in self.llm.generate(list(prompt), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
                if token in stop or len(tokens) >= budget:
                    break
                tokens.append(token)
            texts.append(self.tokenizer.decode(tokens, skip_special_tokens=True))
        return texts

    def close(self) -> None:
        self.llm.close()


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Add a backend class to :data:`BACKENDS` (a name already there is refused)."""
    if cls.name in BACKENDS:
        raise ValueError(f"evaluation backend {cls.name!r} is already registered")
    BACKENDS[cls.name] = cls
    return cls


for _cls in (TransformersBackend, VllmBackend, LlamaCppBackend):
    register_backend(_cls)
