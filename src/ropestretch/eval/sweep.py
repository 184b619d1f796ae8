"""One evaluation run, from a model name to result rows in a run folder: :func:`run`, which the CLI,
the demo and the studies call.

Top to bottom: the task and its options (:data:`ropestretch.eval.tasks.TASKS`); the device and
dtype checked against this machine; the model resolved (a folder, a ``.gguf`` file, the bundled
name, a hub id); the lengths (default: the window doubling up to the target); the text; the batch
that fits in memory; then, holding the run folder's lock, the store (which refuses other
arguments), the backend, and the sweep. Everything that can be wrong is checked before the run
folder is touched, and a rerun with the same arguments skips the cells already finished.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError

ANSWER_ROOM = 32  # positions past the longest prompt that an answer and its generation budget may take


def default_lengths(model: str | Path) -> list[int]:
    """The window doubling up to the target for a ropestretch checkpoint, else 1x to 8x its window."""
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


def fitting_batch(model_dir, length: int, batch: int, where) -> int:
    """The largest batch up to ``batch`` whose KV cache at ``length`` fits beside the weights; a
    request that does not fit even one sample is refused with its estimate."""
    from ropestretch.budgets import available_memory, check_fits
    from ropestretch.eval.loading import kv_cache_bytes
    from ropestretch.jsonl import read_json

    config = read_json(Path(model_dir) / "config.json", "a model config")
    weights = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    per_sample = kv_cache_bytes(config, length, 2 if where.dtype in ("bf16", "fp16") else 4)
    if where.device != "cpu":  # on a GPU the host only holds the weights once
        return batch
    check_fits(weights + per_sample, f"one {length}-token sample (weights and KV cache)")
    room = int(0.8 * available_memory()) - weights
    return max(1, min(batch, room // max(1, per_sample)))


def read_documents(text: str | None) -> list[str] | None:
    """The documents of ``--text`` (a file or folder), or None for the built-in prose."""
    from ropestretch.data.corpus import load_records

    if text is None:
        return None
    if not str(text).strip():
        raise UsageError("--text is empty; give a text file or folder, or leave --text out for the built-in prose")
    if not Path(text).exists():
        raise UsageError(f"no such text file or folder: {text}")
    records = load_records(str(text))
    if "text" not in records.column_names:
        raise UsageError(f"{text} has no 'text' field")
    documents = [t for t in records["text"] if isinstance(t, str) and t.strip()]
    if not documents:
        raise UsageError(f"{text} holds no usable text")
    return documents


def run(task: str | Sequence[str], model: str, out: str | Path, *, lengths: list[int] | None = None,
        samples: int | None = None, seed: int = 0, text: str | None = None, scoring: str | None = None,
        prompt: str = "auto", batch_size: int = 8, backend: str = "transformers", tensor_parallel_size: int = 1,
        device: str = "auto", dtype: str = "auto", device_map: str | None = None, attn_implementation: str = "auto",
        trust_remote_code: bool = False, progress: bool = False, attention: str | None = None,
        attention_options: dict[str, Any] | None = None, **options: Any) -> list[dict[str, Any]]:
    """Evaluate ``model`` on ``task`` (a task name, or several: a suite such as RULER's, run one after
    the other on one loaded model) into the run folder ``out``; returns every finished row of the
    tasks there (this call's and a previous run's with the same arguments).

    ``options`` are the task's own (``depths`` for passkey and needle, ``positions`` for kv, ``mode``
    and ``stride`` for ppl: :data:`ropestretch.eval.tasks.TASKS`). ``scoring`` is ``forced`` or
    ``generate`` (default: the task's own). ``backend`` is ``transformers`` (this process),
    ``vllm`` (the checkpoint folder in vLLM's offline engine, ``tensor_parallel_size`` GPUs) or
    ``llamacpp`` (a ``.gguf`` file): :mod:`ropestretch.eval.backends`. ``attention`` is a
    training-free method of :mod:`ropestretch.attention` (``self-extend``, ``string``) with its
    ``attention_options``, on the transformers backend, recorded in the run's arguments."""
    from ropestretch.checkpoints import resolve_model
    from ropestretch.data.prompts import prompt_format
    from ropestretch.eval.loading import load_eval_tokenizer
    from ropestretch.eval.store import RunStore
    from ropestretch.eval.backends import check_backend
    from ropestretch.eval.tasks import get_task, recorded_arguments
    from ropestretch.hardware import placement
    from ropestretch.locks import folder_lock
    from ropestretch.paths import named_path, outside

    specs = [get_task(t) for t in ([task] if isinstance(task, str) else task)]
    if not specs:
        raise UsageError("no evaluation task given")
    values = {spec.name: spec.resolve(options) for spec in specs}
    if scoring not in (None, "forced", "generate"):
        raise UsageError(f"scoring must be forced or generate, got {scoring!r}")
    check_backend(backend)
    where = placement(device, dtype, device_map, attn_implementation)
    named_path(out, "--out")
    gguf = str(model) if backend == "llamacpp" and str(model).endswith(".gguf") and Path(model).is_file() else None
    model_dir = resolve_model(model)  # a missing folder, a bad GGUF, an unreachable hub: one line
    # before the lock, so nothing is left in either; results inside the text folder would become haystack
    outside(out, {"model folder": model_dir, "text folder": text or None}, "--out")
    lengths = lengths or default_lengths(model_dir)
    documents = read_documents(text)
    tokenizer = load_eval_tokenizer(str(model_dir), trust_remote_code)
    retrieval = any(spec.retrieval for spec in specs)
    form = prompt_format(tokenizer, prompt) if retrieval else None
    settings = {spec.name: recorded_arguments(
        spec, str(model), lengths, samples or spec.samples, seed, text, values[spec.name], scoring or spec.scoring,
        form.name if form and spec.retrieval else None, backend, dtype=where.dtype, folder=out) for spec in specs}
    extra: dict[str, Any] = {}
    if backend == "vllm" and tensor_parallel_size != 1:
        extra["tensor_parallel_size"] = tensor_parallel_size
    longest = max(lengths) + ANSWER_ROOM + max(spec.past_length for spec in specs)
    if attention not in (None, "none"):
        from ropestretch.attention import config_window, resolve
        from ropestretch.jsonl import read_json

        if backend != "transformers":
            raise UsageError(f"--attention {attention} runs on the transformers backend: no engine runs it")
        window = config_window(read_json(Path(model_dir) / "config.json", "a model config"))
        extra["attention"] = resolve(attention, window, longest, **(attention_options or {}))
    from ropestretch.eval.backends import BACKENDS

    # on every row the run writes (not in its arguments: a note's wording may change, a resume may not)
    notes = BACKENDS[backend].notes(model_dir, longest + ANSWER_ROOM)
    for recorded in settings.values():
        recorded.update(extra)
    # an engine places its own memory; transformers' batch is sized here
    batch = fitting_batch(model_dir, max(lengths), batch_size if retrieval else 1, where) \
        if backend == "transformers" else batch_size
    if backend == "llamacpp" and gguf is None:
        raise UsageError("--backend llamacpp runs a .gguf file: pass the file apply or gguf wrote as --model")
    with folder_lock(out, "eval"):
        stores = [RunStore(out, spec.name, settings[spec.name]) for spec in specs]  # refuse other arguments first
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        engine = _open(backend, model_dir, tokenizer, where, longest - ANSWER_ROOM, gguf, tensor_parallel_size,
                       trust_remote_code)
        if "attention" in extra:
            from ropestretch.attention import enable

            method = extra["attention"]
            enable(engine.model, method["method"], longest, **{k: v for k, v in method.items() if k != "method"})
        rows: list[dict[str, Any]] = []
        try:
            for spec, store in zip(specs, stores):
                store.stamp["backend"] = engine.describe()
                if notes:
                    store.stamp["engine_notes"] = notes
                _sweep(spec, engine, store, form if spec.retrieval else None, documents, lengths, values[spec.name],
                       samples or spec.samples, seed, scoring or spec.scoring, batch, progress)
                rows += list(store.done.values())
        finally:
            engine.close()
        return rows


def _open(backend, model_dir, tokenizer, where, longest, gguf, tensor_parallel_size, trust_remote_code):
    from ropestretch.eval.backends import BACKENDS

    # room for the longest prompt's answer and the generation budget after it
    return BACKENDS[backend].open(model_dir=model_dir, tokenizer=tokenizer, placement=where, max_len=longest + 2 * ANSWER_ROOM,
                                  gguf_file=gguf, tensor_parallel_size=tensor_parallel_size,
                                  trust_remote_code=trust_remote_code)


def _sweep(spec, engine, store, form, documents, lengths, values, samples, seed, scoring, batch, progress) -> None:
    from tqdm.auto import tqdm

    from ropestretch.data.tasks import Haystack
    from ropestretch.eval.retrieval import Evaluator

    bar = tqdm(total=len(spec.cells(lengths, values)), desc=f"eval {spec.name}", unit="cell", disable=not progress)
    ev = Evaluator(engine, engine.tokenizer, scoring, batch, progress=bar, prompt=form, documents=documents)
    if spec.haystack:
        ev.haystack = Haystack(engine.tokenizer, documents)
    try:
        spec.run(ev, store, lengths, samples, seed, values)
    finally:
        bar.close()
