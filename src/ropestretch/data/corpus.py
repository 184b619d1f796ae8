"""Reading text, packing it into training rows, rendering chats, the built-in English corpus, a tokenizer.

Training rows are dicts ``{"input_ids": [...], "sample_id": i}`` (plus ``labels`` in chat mode,
-100 outside assistant turns), each exactly the sample length except possibly none: the short
remainder of a stream is dropped and counted. Text is read with the ``datasets`` library.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError, root_cause

TEXT_SUFFIXES = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# --- the built-in corpus: English that ships with Python itself ----------------------------------


def builtin_documents(max_docs: int | None = None) -> list[str]:
    """Real English prose that needs no download: the ``pydoc_data`` topics (the language reference)
    and the docstrings of the standard library's pure-Python modules, read from source without
    importing them. Deterministic for a given Python version (read once per process)."""
    return list(_builtin_documents(max_docs))


@functools.lru_cache(maxsize=4)
def _builtin_documents(max_docs: int | None) -> tuple[str, ...]:
    docs = language_reference()
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        if max_docs is not None and len(docs) >= max_docs:
            break
        text = module_docstrings(path)
        if text:
            docs.append(text)
    return tuple(docs[:max_docs] if max_docs is not None else docs)


def language_reference() -> list[str]:
    """The ``pydoc_data`` topics: Python's language reference, one document per topic."""
    import pydoc_data.topics

    return [text.strip() for _, text in sorted(pydoc_data.topics.topics.items()) if len(text) > 200]


def module_docstrings(path: Path) -> str | None:
    """A Python source file's module, class and function docstrings of some length (prose, not
    doctest sessions), joined; None when it has none or does not parse."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return None
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80 and not doc.lstrip().startswith((">>>", "$")):
                parts.append(doc.strip())
    return "\n\n".join(parts) or None


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    """Split prose into sentences (for haystacks and needles snapped to sentence boundaries)."""
    flat = re.sub(r"\s+", " ", text).strip()
    return [s for s in _SENTENCE.split(flat) if s]


# --- reading local or hub data -----------------------------------------------------------------


def _data_files(path: Path) -> dict[str, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    by_kind: dict[str, list[str]] = {}
    for file in files:
        kind = TEXT_SUFFIXES.get(file.suffix.lower())
        if kind and not file.name.startswith("."):
            by_kind.setdefault(kind, []).append(str(file))
    return by_kind


def check_json_lines(path: Path, limit: int = 200 << 20) -> None:
    """A .jsonl/.json file that is not UTF-8 or holds a line that is not JSON is refused with the
    file and line (files over ``limit`` bytes are left to datasets)."""
    if path.stat().st_size > limit:
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise UsageError(f"{path}: line {line} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        return  # one JSON document, or JSON lines: datasets tells them apart
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as err:
                raise UsageError(f"{path}: line {number} is not valid JSON ({getattr(err, 'msg', err)})") from None


def load_records(source: str | os.PathLike, split: str = "train"):
    """A ``datasets.Dataset`` from a local ``.txt``/``.md`` (one document per file), ``.jsonl``,
    ``.json`` or ``.parquet`` file or a folder of them, or a dataset hub name (online only)."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.exists():
        by_kind = _data_files(path)
        if not by_kind:
            raise UsageError(f"{source} holds no .txt, .md, .jsonl, .json or .parquet file")
        for file in by_kind.get("json", []):
            check_json_lines(Path(file))
        parts = []
        for kind, files in by_kind.items():
            try:
                if kind == "text":
                    parts.append(datasets.Dataset.from_dict(
                        {"text": [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]}))
                else:
                    parts.append(datasets.load_dataset(kind, data_files=files, split="train"))
            except UsageError:
                raise
            except Exception as err:  # malformed JSON lines, unreadable parquet, ...
                raise UsageError(f"cannot read {kind} data in {source}: {root_cause(err)}") from None
        if len(parts) == 1:
            return parts[0]
        columns = set.intersection(*(set(p.column_names) for p in parts))
        return datasets.concatenate_datasets([p.select_columns(sorted(columns)) for p in parts])
    text = str(source)
    if text.startswith((".", "/", "~")) or Path(text).suffix.lower() in TEXT_SUFFIXES:
        raise UsageError(f"no such data file or folder: {source}")
    try:
        return datasets.load_dataset(text, split=split)
    except Exception as err:
        raise UsageError(f"cannot load dataset {text!r} from the hub ({type(err).__name__}); "
                         "offline, give a local file or folder") from None


# --- base mode: tokenize and cut into samples ----------------------------------------------------


@dataclass
class PackReport:
    documents: int = 0
    empty: int = 0
    dropped_short: int = 0
    samples: int = 0
    tokens_dropped: int = 0

    def line(self, length: int) -> str:
        bits = [f"{self.documents} documents -> {self.samples} samples of {length} tokens"]
        if self.dropped_short:
            bits.append(f"{self.dropped_short} documents shorter than a sample dropped")
        if self.empty:
            bits.append(f"{self.empty} empty documents skipped")
        if self.tokens_dropped:
            bits.append(f"{self.tokens_dropped} trailing tokens dropped")
        return "; ".join(bits)


def pack_token_streams(docs: Iterable[Sequence[int]], length: int, eos_id: int | None, short: str = "pack",
                       report: PackReport | None = None) -> Iterator[list[int]]:
    """Cut tokenized documents into ``length``-token samples.

    ``short="pack"``: documents are joined into one stream with an EOS between them and cut into
    samples (no token is lost but the final remainder). ``short="drop"``: documents shorter than a
    sample are dropped (counted in ``report``), longer ones cut into samples, remainders dropped.
    """
    if short not in ("pack", "drop"):
        raise UsageError(f"short documents must be 'pack' or 'drop', got {short!r}")
    report = report if report is not None else PackReport()
    buffer: list[int] = []
    for ids in docs:
        report.documents += 1
        if not ids:
            report.empty += 1
            continue
        if short == "drop":
            if len(ids) < length:
                report.dropped_short += 1
                continue
            whole = len(ids) // length * length
            for start in range(0, whole, length):
                report.samples += 1
                yield list(ids[start:start + length])
            report.tokens_dropped += len(ids) - whole
            continue
        buffer.extend(ids)
        if eos_id is not None:
            buffer.append(eos_id)
        while len(buffer) >= length:
            report.samples += 1
            yield buffer[:length]
            del buffer[:length]
    report.tokens_dropped += len(buffer)


def text_samples(records, tokenizer, length: int, short: str = "pack", text_field: str = "text",
                 report: PackReport | None = None) -> list[dict[str, Any]]:
    """Tokenize the ``text_field`` of every record and cut into samples with ``sample_id``.

    Records that already hold ``input_ids`` (pre-tokenized rows) are used as they are: each must be
    exactly one sample long."""
    if "input_ids" in records.column_names:
        rows = []
        for i, ids in enumerate(records["input_ids"]):
            if not isinstance(ids, list) or len(ids) != length or not all(isinstance(t, int) for t in ids):
                raise UsageError(f"pre-tokenized row {i} must be a list of exactly {length} token ids")
            rows.append({"input_ids": ids, "sample_id": i})
        if report is not None:
            report.documents = report.samples = len(rows)
        if not rows:
            raise UsageError("the data holds no rows")
        return rows
    if text_field not in records.column_names:
        raise UsageError(f"the data has no {text_field!r} field (fields: {', '.join(records.column_names)})")
    texts = (t if isinstance(t, str) else "" for t in records[text_field])
    token_docs = (tokenizer(t, add_special_tokens=False)["input_ids"] if t.strip() else [] for t in texts)
    report = report if report is not None else PackReport()
    rows = [{"input_ids": ids, "sample_id": i} for i, ids in
            enumerate(pack_token_streams(token_docs, length, tokenizer.eos_token_id, short, report))]
    if not rows:
        if report.documents == report.empty:
            raise UsageError("the data holds no usable text (every document is empty)")
        if short == "drop":
            raise UsageError(f"all {report.documents} documents are shorter than a sample ({length} tokens) "
                             "and were dropped; use --short-docs pack")
        raise UsageError(f"the data holds fewer than {length} tokens: not one full sample")
    return rows


# --- chat mode: render with the chat template, loss on assistant tokens only ---------------------


def render_conversation(messages: list[dict[str, str]], tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its labels: the ids on assistant turns, -100 elsewhere.

    Each assistant turn's tokens are what its message adds to the rendering of everything before
    it (with the generation prompt), so any chat template works, with or without generation tags.
    """
    def ids(msgs, prompt):
        out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=prompt)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    full = ids(messages, False)
    labels = [-100] * len(full)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = len(ids(messages[:i], True)) if i else 0
        end = len(ids(messages[: i + 1], False))
        labels[start:end] = full[start:end]
    return full, labels


def chat_samples(records, tokenizer, length: int, report: PackReport | None = None) -> list[dict[str, Any]]:
    """Render every record's ``messages`` and pack conversations into rows of at most ``length``
    tokens (several per row, never split; longer ones truncated to ``length``)."""
    if "messages" not in records.column_names:
        raise UsageError(f"chat data needs a 'messages' field (fields: {', '.join(records.column_names)})")
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("the tokenizer has no chat template; --chat needs one")
    report = report if report is not None else PackReport()
    rows: list[dict[str, Any]] = []
    ids_row: list[int] = []
    labels_row: list[int] = []

    def flush():
        if ids_row:
            rows.append({"input_ids": list(ids_row), "labels": list(labels_row), "sample_id": len(rows)})
            ids_row.clear()
            labels_row.clear()

    for messages in records["messages"]:
        report.documents += 1
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                     for m in messages):
            raise UsageError("every 'messages' must be a list of {role, content} objects")
        if not any(m["role"] == "assistant" for m in messages):
            report.empty += 1
            continue
        ids, labels = render_conversation(messages, tokenizer)
        if len(ids) > length:
            report.tokens_dropped += len(ids) - length
            ids, labels = ids[:length], labels[:length]
        if len(ids_row) + len(ids) > length:
            flush()
        ids_row.extend(ids)
        labels_row.extend(labels)
    flush()
    report.samples = len(rows)
    if not rows:
        raise UsageError("the chat data holds no conversation with an assistant turn")
    return rows


# --- a small BPE tokenizer, trained here ---------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, extra_tokens: Sequence[str] = (),
                    digit_group: int = 1):
    """A byte-level BPE tokenizer trained with ``tokenizers`` on ``texts``, wrapped as a
    ``PreTrainedTokenizerFast`` with ``<s>``, ``</s>``, ``<pad>`` and a simple chat template.

    Numbers are cut into groups of ``digit_group`` digits from the left before BPE ("12345" is
    "1", "2", ... with 1; "12", "34", "5" with 2), and with 2 or more every group gets its own
    token (all of them are added to the training text), so a number is copied a group at a time:
    fewer tokens to copy, and each far less likely to occur elsewhere in the context."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(digit_group, bool) or not isinstance(digit_group, int) or not 1 <= digit_group <= 3:
        raise UsageError(f"digit_group must be 1, 2 or 3, got {digit_group!r}")
    tok = Tokenizer(models.BPE())
    digits = (pre_tokenizers.Digits(individual_digits=True) if digit_group == 1 else
              pre_tokenizers.Split(Regex(rf"\d{{1,{digit_group}}}"), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>", *extra_tokens]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if digit_group > 1:  # every group, often enough that BPE merges each one before the rarer prose pairs
        groups = " ".join(f"{i:0{n}d}" for n in range(2, digit_group + 1) for i in range(10 ** n))
        texts = itertools.chain(texts, [groups] * 5000)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def token_stream(tokenizer, documents: list[str]) -> list[int]:
    """Documents tokenized and joined with EOS (the perplexity text as one stream)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    return [t for doc in ids for t in doc + ([eos] if eos is not None else [])]
