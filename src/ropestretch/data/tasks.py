"""Synthetic long-context retrieval tasks, generated offline from a seed (docs/evaluation.md).

Every task builds its prompt in token space, so its length is exact: an instruction (except in the
``legacy`` format), a context of real prose (a :class:`Haystack`), repeated filler or generated
records, then a question; the answer follows the prompt. How the pieces are put to the model is a
:class:`~ropestretch.data.prompts.PromptFormat` (``legacy``, ``base`` or ``chat``); ``prompt=None``
is ``legacy``.

- ``passkey``: "The pass key is NNNNN. Remember it. NNNNN is the pass key." at a depth of Landmark
  Attention's repeated filler ("The grass is green. The sky is blue. ..."; real prose in ``legacy``).
- ``needle``: a keyed needle sentence at depth ``p%`` of a real-prose haystack, snapped to a
  sentence boundary.
- ``lines``: LongChat-Lines, "line <adjective>-<noun>: REGISTER_CONTENT is <NNNNN>", one line asked.
- ``kv``: lost-in-the-middle key-value retrieval over a JSON object of UUID -> UUID, the queried
  key at a chosen fraction of the object.
"""

from __future__ import annotations

import json
import re
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ropestretch.data.prompts import PromptFormat
from ropestretch.errors import UsageError

ADJECTIVES = ("amber brave calm dusty eager faint gentle hollow icy jolly keen lively mellow nimble "
              "orange proud quiet rapid silver tender upper vivid wooden young zesty bitter cosmic "
              "dark early fierce golden humble ivory jagged lunar misty noble odd pale royal solid "
              "tidy urban violet wild").split()
NOUNS = ("anchor bridge candle desert engine forest garden harbor island jungle kettle ladder meadow "
         "needle orchard palace quarry river saddle tower valley window yard zebra beacon canyon "
         "dragon falcon glacier hammer lantern marble nectar oyster pepper rocket spider tunnel "
         "violin walnut").split()
CITIES = ("Oslo Lima Cairo Quito Dakar Hanoi Porto Riga Sofia Tunis Accra Baku Bern Doha Kyiv Lagos "
          "Minsk Nairobi Perth Rome Seoul Tokyo Vienna Zagreb").split()


_FIRST_INT = re.compile(r"\d+")


def first_integer(answer: str, generated: str) -> bool:
    """Right when the first integer of the generated text is the answer (passkey, LongChat-Lines)."""
    found = _FIRST_INT.search(generated)
    return bool(found) and found.group() == answer


def contains(answer: str, generated: str) -> bool:
    """Right when the generated text holds the answer (needle, key-value)."""
    return answer in generated


_CONTROL = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str) -> str:
    """RULER's post-processing of a prediction: stripped, control characters turned into newlines."""
    return _CONTROL.sub("\n", text.strip()).strip()


def match_all(references: Sequence[str], prediction: str) -> float:
    """RULER's ``string_match_all`` for one sample: the share of references found in the prediction,
    case-insensitive."""
    text = clean_prediction(prediction).lower()
    return sum(r.lower() in text for r in references) / len(references)


def match_part(references: Sequence[str], prediction: str) -> float:
    """RULER's ``string_match_part`` (its QA metric) for one sample: 1 when any reference is found."""
    text = clean_prediction(prediction).lower()
    return float(any(r.lower() in text for r in references))


@dataclass
class TaskSample:
    """One prompt and its expected answer.

    Attributes:
        task: the task name.
        prompt_ids: context and question, as token ids.
        answer: the expected answer text (what string matching looks for).
        answer_ids: the answer's token ids (teacher-forced scoring compares these).
        info: where the answer sits (length, depth, gold index, ...).
        match: ``match(answer, generated)``: whether a generated text is right (string-match scoring).
        references: RULER's references: a generated text is scored by the share of them it holds
            (:func:`ropestretch.data.ruler.match_all`) and is right when it holds them all.
        budget: the most tokens to generate (default: the answer's length + 4).
    """

    task: str
    prompt_ids: list[int]
    answer: str
    answer_ids: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    match: Callable[[str, str], bool] = contains
    references: tuple[str, ...] = ()
    budget: int | None = None

    @property
    def max_new_tokens(self) -> int:
        return self.budget or len(self.answer_ids) + 4

    def judge(self, generated: str) -> tuple[bool, float | None]:
        """A generated text's verdict, and its share of the references where the task has them."""
        if self.references:
            share = match_all(self.references, generated)
            return share == 1.0, share
        return self.match(self.answer, generated), None


class Haystack:
    """Real prose, tokenized sentence by sentence, to fill a context to an exact number of tokens.

    ``repeats``: the text is meant to repeat (passkey's filler), so filling past its end says nothing.
    """

    def __init__(self, tokenizer, documents: Sequence[str] | None = None, max_sentence_tokens: int = 48,
                 repeats: bool = False):
        from ropestretch.data.corpus import builtin_documents, sentences

        docs = list(documents) if documents is not None else builtin_documents()
        texts = [" " + s for d in docs for s in sentences(d) if len(s) > 1]
        if not texts:
            raise UsageError("the haystack text holds no sentences")
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        self.pieces = [p[:max_sentence_tokens] for p in ids if p]
        self.lengths = np.array([len(p) for p in self.pieces])
        self.total = int(self.lengths.sum())
        self._warned = repeats

    def fill(self, n_tokens: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """``n_tokens`` of consecutive sentences from a random start, and the sentence boundaries.

        Wraps around (repeating the text, with one warning) when the haystack is shorter than asked.
        """
        if n_tokens > self.total and not self._warned:
            warnings.warn(f"haystack text has {self.total} tokens, fewer than the {n_tokens} asked: it is repeated",
                          stacklevel=2)
            self._warned = True
        out: list[int] = []
        bounds = [0]
        i = int(rng.integers(len(self.pieces)))
        while len(out) < n_tokens:
            out.extend(self.pieces[i])
            bounds.append(len(out))
            i = (i + 1) % len(self.pieces)
        return out[:n_tokens], sorted({b for b in bounds if b < n_tokens} | {n_tokens})  # the end is a boundary too


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _digits(rng: np.random.Generator, n: int) -> str:
    return str(int(rng.integers(10 ** (n - 1), 10**n)))


def check_depth(depth: float) -> float:
    if not isinstance(depth, (int, float)) or not 0 <= depth <= 100:
        raise UsageError(f"depth must be a percentage in [0, 100], got {depth!r}")
    return float(depth)


def check_length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
        raise UsageError(f"length must be a positive integer, got {length!r}")
    return int(length)


@dataclass
class DepthSample:
    """A passkey or needle sample before it is placed: a haystack with room for the needle and the
    question that ends the prompt, and the answer. ``at(depth)`` inserts the needle at ``depth``
    percent of the haystack, snapped to a sentence boundary; the needle sweep places one draw at
    every depth."""

    task: str
    context: list[int]
    bounds: list[int]  # sentence boundaries in ``context``, where the needle may go
    needle: list[int]
    question: list[int]  # everything after the context: question, turn change, start of the answer
    answer: str
    answer_ids: list[int]
    head: list[int] = field(default_factory=list)  # everything before it: template header, instruction
    match: Callable[[str, str], bool] = contains  # string-match scoring of a generated answer

    def cut(self, depth: float) -> int:
        return min(self.bounds, key=lambda b: abs(b - depth / 100 * len(self.context)))

    def prefix(self, depth: float) -> list[int]:
        """The prompt's tokens before the needle at ``depth``: shared by every deeper placement."""
        return self.head + self.context[:self.cut(depth)]

    def at(self, depth: float) -> TaskSample:
        cut = self.cut(depth)
        prompt = self.head + self.context[:cut] + self.needle + self.context[cut:] + self.question
        return TaskSample(self.task, prompt, self.answer, self.answer_ids,
                          {"length": len(prompt), "depth": depth, "needle_at": cut / max(1, len(self.context))}, self.match)


def _depth_sample(task: str, tokenizer, haystack: Haystack, length: int, needle: str, question: list[int],
                  answer: str, rng: np.random.Generator, head: list[int] | None = None,
                  answer_text: str | None = None, match: Callable[[str, str], bool] = contains) -> DepthSample:
    head = head or []
    needle_ids = _ids(tokenizer, needle)
    room = length - len(head) - len(needle_ids) - len(question)
    if room < 1:  # at least one token of haystack, or there is no depth to place the needle at
        raise UsageError(f"length {length} is too short for this task's needle, question and haystack")
    context, bounds = haystack.fill(room, rng)
    answer_ids = _ids(tokenizer, " " + answer if answer_text is None else answer_text)
    return DepthSample(task, context, bounds, needle_ids, question, answer, answer_ids, head, match)


# The standard forms (``base`` and ``chat`` prompts); ``legacy`` keeps the wording below each.
PASSKEY = {
    "instruction": ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                    "I will quiz you about the important information there.\n\n"),
    "filler": "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "needle": " The pass key is {key}. Remember it. {key} is the pass key.",
    "question": "\n\nWhat is the pass key? Answer with the number only.",
    "answer_prefix": "The pass key is",
}
NEEDLE_TEXT = {
    "instruction": ("Some special magic numbers are hidden within the following text. Make sure to memorize them. "
                    "I will quiz you about the numbers afterwards.\n\n"),
    "needle": " One of the special magic numbers for {city} is: {number}.",
    "question": "\n\nWhat is the special magic number for {city} mentioned in the provided text? Answer with the number only.",
    "answer_prefix": "The special magic number for {city} mentioned in the provided text is",
}
NEEDLE = " The magic number of {city} is {number}."  # legacy
NEEDLE_QUESTION = " What is the magic number of {city}? The magic number of {city} is"  # legacy
_FILLERS: dict[int, Haystack] = {}


def filler_haystack(tokenizer) -> Haystack:
    """Landmark Attention's passkey filler, repeated as far as a prompt needs."""
    if id(tokenizer) not in _FILLERS:
        _FILLERS[id(tokenizer)] = Haystack(tokenizer, [PASSKEY["filler"]], repeats=True)
    return _FILLERS[id(tokenizer)]


def passkey(tokenizer, haystack: Haystack, length: int, depth: float, rng: np.random.Generator,
            prompt: PromptFormat | None = None) -> TaskSample:
    """"The pass key is NNNNN. Remember it. NNNNN is the pass key." at ``depth`` percent of the
    repeated filler (``legacy``: of ``haystack``'s prose, with no instruction)."""
    length, depth = check_length(length), check_depth(depth)
    key = _digits(rng, 5)
    needle_text = PASSKEY["needle"].format(key=key)
    if prompt is None or prompt.legacy:
        return _depth_sample("passkey", tokenizer, haystack, length, needle_text,
                             _ids(tokenizer, " What is the pass key? The pass key is"), key, rng,
                             match=first_integer).at(depth)
    return _depth_sample("passkey", tokenizer, filler_haystack(tokenizer), length, needle_text,
                         prompt.tail(tokenizer, PASSKEY["question"], PASSKEY["answer_prefix"]), key, rng,
                         head=prompt.head(tokenizer, PASSKEY["instruction"]), match=first_integer).at(depth)


def needle_draw(tokenizer, haystack: Haystack, length: int, rng: np.random.Generator,
                prompt: PromptFormat | None = None) -> DepthSample:
    """A keyed needle ("One of the special magic numbers for <city> is: NNNNNNN."; ``legacy``: "The
    magic number of <city> is NNNNNNN.") and its haystack, not yet placed."""
    length = check_length(length)
    city, number = CITIES[int(rng.integers(len(CITIES)))], _digits(rng, 7)
    if prompt is None or prompt.legacy:
        return _depth_sample("needle", tokenizer, haystack, length, NEEDLE.format(city=city, number=number),
                             _ids(tokenizer, NEEDLE_QUESTION.format(city=city)), number, rng)
    return _depth_sample("needle", tokenizer, haystack, length, NEEDLE_TEXT["needle"].format(city=city, number=number),
                         prompt.tail(tokenizer, NEEDLE_TEXT["question"].format(city=city),
                                     NEEDLE_TEXT["answer_prefix"].format(city=city)), number, rng,
                         head=prompt.head(tokenizer, NEEDLE_TEXT["instruction"]))


def needle(tokenizer, haystack: Haystack, length: int, depth: float, rng: np.random.Generator,
           prompt: PromptFormat | None = None) -> TaskSample:
    """A keyed needle at ``depth`` percent of a haystack."""
    return needle_draw(tokenizer, haystack, length, rng, prompt).at(check_depth(depth))


LINES_TEXT = {
    "instruction": ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
                    "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
                    "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to "
                    "retrieve the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n"),
    "question": ("\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {name}? I need the number. "
                 "Answer with the number only."),
    "answer_prefix": "The <REGISTER_CONTENT> in line {name} is",
}
KV_TEXT = {
    "instruction": "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n",
    "question": '\n\nKey: "{key}"\nCorresponding value:',
    "answer_prefix": '"',
}


def lines(tokenizer, length: int, rng: np.random.Generator, position: float | None = None,
          questions: int = 1, prompt: PromptFormat | None = None) -> TaskSample:
    """LongChat-Lines: as many "line <adj>-<noun>: REGISTER_CONTENT is <NNNNN>" lines as fit, one asked
    (at fraction ``position`` of the lines, or uniformly at random).

    ``questions > 1`` (for ``legacy`` training rows) asks that many distinct lines in turn, each
    earlier question followed by its answer in the prompt; the sample's answer is the last one's.
    """
    length = check_length(length)
    if isinstance(questions, bool) or not isinstance(questions, int) or questions < 1:
        raise UsageError(f"questions must be a positive integer, got {questions!r}")
    legacy = prompt is None or prompt.legacy
    if not legacy and questions > 1:
        raise UsageError("several questions per LongChat-Lines sample are for legacy training rows only")
    names = [f"{a}-{n}" for a in ADJECTIVES for n in NOUNS]
    order = rng.permutation(len(names))
    longest = max(ADJECTIVES, key=len) + "-" + max(NOUNS, key=len)
    if legacy:
        header = _ids(tokenizer, "Below is a record of lines I want you to remember.\n")
        per_question = len(_ids(tokenizer, f"The REGISTER_CONTENT in line {longest} is 99999\n")) + 4
    else:
        header = prompt.head(tokenizer, LINES_TEXT["instruction"])
        per_question = len(prompt.tail(tokenizer, LINES_TEXT["question"].format(name=longest),
                                       LINES_TEXT["answer_prefix"].format(name=longest))) + 8
    question_room = per_question * questions  # tokens kept free for the questions (and earlier answers)
    records, used = [], len(header)
    for j in order:
        value = _digits(rng, 5)
        piece = _ids(tokenizer, f"line {names[j]}: REGISTER_CONTENT is <{value}>\n")
        if used + len(piece) + question_room > length:
            break
        records.append((names[j], value, piece))
        used += len(piece)
    if len(records) < max(2, questions):
        raise UsageError(f"length {length} is too short for LongChat-Lines")
    if position is not None:
        asked = [min(len(records) - 1, int(round(position * (len(records) - 1))))]
    elif questions == 1:
        asked = [int(rng.integers(len(records)))]
    else:
        asked = rng.choice(len(records), size=questions, replace=False).tolist()
    prompt_ids = header + [t for _, _, p in records for t in p]
    k = asked[-1]
    name, value, _ = records[k]
    if legacy:
        for i, q in enumerate(asked):
            if i:
                prompt_ids += _ids(tokenizer, " " + records[asked[i - 1]][1] + "\n")
            prompt_ids += _ids(tokenizer, f"The REGISTER_CONTENT in line {records[q][0]} is")
    else:
        prompt_ids += prompt.tail(tokenizer, LINES_TEXT["question"].format(name=name),
                                  LINES_TEXT["answer_prefix"].format(name=name))
    return TaskSample("lines", prompt_ids, value, _ids(tokenizer, " " + value),
                      {"length": len(prompt_ids), "lines": len(records), "index": k,
                       "position": k / max(1, len(records) - 1)}, first_integer)


def kv(tokenizer, length: int, gold: float, rng: np.random.Generator, prompt: PromptFormat | None = None) -> TaskSample:
    """Key-value retrieval: a JSON object of UUID -> UUID filling ``length`` tokens, the queried key at
    fraction ``gold`` (0 = first pair, 1 = last) of the object."""
    length = check_length(length)
    if not isinstance(gold, (int, float)) or not 0 <= gold <= 1:
        raise UsageError(f"gold position must be a fraction in [0, 1], got {gold!r}")

    def new_uuid() -> str:
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))

    legacy = prompt is None or prompt.legacy

    def ask(key: str) -> list[int]:
        if legacy:
            return _ids(tokenizer, f'}}\nKey: "{key}"\nThe value of the key is: "')
        return _ids(tokenizer, "}") + prompt.tail(tokenizer, KV_TEXT["question"].format(key=key), KV_TEXT["answer_prefix"])

    head = _ids(tokenizer, "JSON data:\n{") if legacy else prompt.head(tokenizer, KV_TEXT["instruction"]) + _ids(tokenizer, "{")
    pairs, used = [], len(head)
    per_pair = len(_ids(tokenizer, json.dumps({new_uuid(): new_uuid()})[1:-1] + ", "))
    tail_room = len(ask(new_uuid())) + 4
    while used + per_pair + tail_room <= length:
        pairs.append((new_uuid(), new_uuid()))
        used += per_pair
    if len(pairs) < 2:
        raise UsageError(f"length {length} is too short for key-value retrieval")
    k = int(round(gold * (len(pairs) - 1)))
    key, value = pairs[k]
    body = ", ".join(f'"{a}": "{b}"' for a, b in pairs)
    if legacy:
        prompt_ids = head + _ids(tokenizer, body + "}\n") + _ids(tokenizer, f'Key: "{key}"\nThe value of the key is: "')
    else:
        prompt_ids = head + _ids(tokenizer, body) + ask(key)
    return TaskSample("kv", prompt_ids, value, _ids(tokenizer, value), {"length": len(prompt_ids), "pairs": len(pairs),
                                                                        "index": k, "gold": gold})


def copy_sequence(length: int, low: int, high: int, rng: np.random.Generator, min_block: int = 8,
                  max_block: int = 64) -> list[int]:
    """A random block of token ids in ``[low, high)`` repeated to fill ``length``: the copy
    (induction) curriculum that retrieval rests on."""
    block = rng.integers(low, high, int(rng.integers(min_block, max_block + 1))).tolist()
    return (block * (length // len(block) + 1))[:length]


def copy_row(tokenizer, length: int, rng: np.random.Generator) -> list[int]:
    """A training row of the copy curriculum: a block of 16 to 48 ordinary tokens, repeated. Varied
    lengths teach content matching; a fixed one, a positional shortcut (``ropestretch.pretrain``)."""
    return copy_sequence(length, len(tokenizer.all_special_ids), len(tokenizer), rng, 16, 48)


TRAINING_TASKS = ("passkey", "needle", "lines", "kv")


def check_needles(most: int) -> int:
    """How many needles a training row may hold: an integer from 1 to one per city."""
    if isinstance(most, bool) or not isinstance(most, (int, np.integer)) or not 1 <= most <= len(CITIES):
        raise UsageError(f"needles per row must be an integer from 1 to {len(CITIES)}, got {most!r}")
    return int(most)


def needles_row(tokenizer, haystack: Haystack, length: int, rng: np.random.Generator, most: int) -> list[int]:
    """A needle training row of exactly ``length`` tokens: 1 to ``most`` keyed needles (uniformly
    many, distinct cities), each at a random sentence boundary of the haystack, then every one asked
    in turn, each question followed by its answer, and end-of-text.

    Every question ends in a copy of seven digits, so the row teaches copying that many times over
    (the evaluation's needle rows keep one needle).
    """
    length, most = check_length(length), check_needles(most)
    count = int(rng.integers(1, most + 1))
    items = []  # (needle, question, answer) token ids per city
    for j in rng.choice(len(CITIES), size=count, replace=False):
        city, number = CITIES[int(j)], _digits(rng, 7)
        items.append([_ids(tokenizer, text) for text in (
            NEEDLE.format(city=city, number=number), NEEDLE_QUESTION.format(city=city), " " + number)])
    room = length - sum(len(t) for item in items for t in item) - 1
    if room < 1:
        raise UsageError(f"length {length} is too short for {count} needles, their questions and a haystack")
    context, bounds = haystack.fill(room, rng)
    for (needle_ids, _, _), cut in zip(items, sorted(rng.choice(bounds, size=count).tolist(), reverse=True)):
        context = context[:cut] + needle_ids + context[cut:]
    asked = [t for i in rng.permutation(count) for t in items[i][1] + items[i][2]]
    return context + asked + [tokenizer.eos_token_id]


def training_sample(kind: str, tokenizer, haystack: Haystack, length: int, rng: np.random.Generator,
                    questions: int = 1) -> list[int]:
    """One retrieval sample for a training row: prompt, answer and end-of-text, at most ``length`` tokens.

    Depth (passkey, needle) and gold position (kv) are drawn uniformly; ``questions`` asks that many
    lines of a LongChat-Lines sample.
    """
    length = check_length(length)
    # room for the answer after the prompt: the longest pass key and needle number in this tokenizer,
    # and a UUID is at most 36 tokens
    answer_room = {"passkey": len(_ids(tokenizer, " 99999")), "needle": len(_ids(tokenizer, " 9999999")),
                   "kv": 36, "lines": 0}
    if kind not in answer_room:
        raise UsageError(f"unknown training task {kind!r} (one of {', '.join(TRAINING_TASKS)})")
    room = length - answer_room[kind] - 1
    if kind == "passkey":
        sample = passkey(tokenizer, haystack, room, float(rng.uniform(0, 100)), rng)
    elif kind == "needle":
        sample = needle(tokenizer, haystack, room, float(rng.uniform(0, 100)), rng)
    elif kind == "lines":
        sample = lines(tokenizer, room, rng, questions=questions)
    else:
        sample = kv(tokenizer, room, float(rng.uniform(0, 1)), rng)
    ids = sample.prompt_ids + sample.answer_ids + [tokenizer.eos_token_id]
    assert len(ids) <= length, (kind, len(ids), length)
    return ids
