"""RULER's synthetic tasks (Hsieh et al. 2024, arXiv 2404.06654), generated offline from a seed.

Written from the definitions in the authors' code (hsiehjackson/RULER at e40fae1:
``scripts/synthetic.yaml``, ``scripts/data/synthetic/{constants,niah,variable_tracking,
common_words_extraction,freq_words_extraction}.py``, ``scripts/eval/evaluate.py``): the same
templates and answer prefixes, keys and values (``wonderwords`` adjective-noun words, 7-digit
numbers, UUIDs), haystacks (repeated noise, an essay, distractor needles), needle counts, variable
chains, word frequencies, generation budgets and scoring. Where ropestretch differs, it says so:

- the essay haystack is the English that ships with Python (the language reference, then the
  standard library's docstrings; or ``--text``) in place of Paul Graham's essays, which need a
  download; like RULER's, every sample reads it from its start;
- a prompt is filled to the largest haystack that fits (a search over the haystack's size, not
  RULER's steps of 500 words or 25 lines), so its length is within a unit of the cell's;
- sentences are split by :func:`ropestretch.data.corpus.sentences`, not nltk's punkt;
- in the ``chat`` prompt form the one-shot examples of ``vt`` and ``cwe`` sit inside the user turn
  (RULER puts them in the model's template as plain text, which is what the ``base`` form does);
- draws come from numpy's generator for the cell, so the samples are RULER's kind, not its bytes.

A cell's length is RULER's ``max_seq_length``: the prompt and the task's generation budget
together (``fwe`` excepted, as in RULER: its prompt alone fills the length). Scoring is RULER's
``string_match_all``: the share of the references found, case-insensitive, in the generated text;
a sample is right when it finds them all.
"""

from __future__ import annotations

import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from ropestretch.data.prompts import PromptFormat
from ropestretch.data.tasks import TaskSample, check_length, clean_prediction, match_all, match_part  # noqa: F401
from ropestretch.errors import UsageError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
# RULER's essay depths: 40 evenly spaced percentages, a needle's drawn without replacement
ESSAY_DEPTHS = tuple(int(x) for x in np.round(np.linspace(0, 100, 40)))

TEMPLATES = {
    "niah": ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_v} afterwards.\n{context}\nWhat are all the special magic {type_v} "
             "for {query} mentioned in the provided text?",
             " The special magic {type_v} for {query} mentioned in the provided text are"),
    "vt": ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
           "Question: Find all variables that are assigned the value {query} in the text above.",
           # RULER's spelling, typo included
           " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
           "assgined the value {query}, they are: "),
    "cwe": ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
            "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
            " Answer: The top 10 words that appear most often in the list are:"),
    "fwe": ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the "
            "dots '....'. What are the three most frequently appeared words in the above coded text?",
            " Answer: According to the coded text above, the three most frequently appeared words are:"),
}
BUDGETS = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}  # RULER's tokens_to_generate


@dataclass(frozen=True)
class RulerTask:
    """One synthetic RULER task as ``scripts/synthetic.yaml`` configures it."""

    name: str
    kind: str  # niah, vt, cwe, fwe
    help: str
    haystack: str = ""  # niah: repeat, essay or needle
    type_k: str = "words"
    type_v: str = "numbers"
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1

    @property
    def budget(self) -> int:
        return BUDGETS[self.kind]


RULER_TASKS: dict[str, RulerTask] = {t.name: t for t in (
    RulerTask("niah_single_1", "niah", "one word->number needle in repeated noise", "repeat"),
    RulerTask("niah_single_2", "niah", "one word->number needle in an essay", "essay"),
    RulerTask("niah_single_3", "niah", "one word->UUID needle in an essay", "essay", type_v="uuids"),
    RulerTask("niah_multikey_1", "niah", "one of 4 word->number needles asked, in an essay", "essay", num_k=4),
    RulerTask("niah_multikey_2", "niah", "one word->number needle among distractor needles", "needle"),
    RulerTask("niah_multikey_3", "niah", "one UUID->UUID needle among distractor needles", "needle",
              type_k="uuids", type_v="uuids"),
    RulerTask("niah_multivalue", "niah", "4 values of one key, all asked, in an essay", "essay", num_v=4),
    RulerTask("niah_multiquery", "niah", "4 keys, all asked, in an essay", "essay", num_k=4, num_q=4),
    RulerTask("vt", "vt", "variable tracking: 1 chain of 4 hops in noise"),
    RulerTask("cwe", "cwe", "common words: the 10 words of a list that appear 30 times, the rest 3"),
    RulerTask("fwe", "fwe", "frequent words: the 3 most frequent coded words of a Zipf (alpha 2) text"),
)}
GROUPS = {"all": tuple(RULER_TASKS), "niah": tuple(n for n in RULER_TASKS if n.startswith("niah"))}


def select(text: str) -> list[str]:
    """``all``, ``niah`` or comma-separated task names -> the task names, in RULER's order."""
    chosen: set[str] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part not in GROUPS and part not in RULER_TASKS:
            raise UsageError(f"unknown RULER task {part!r} (one of all, niah, {', '.join(RULER_TASKS)})")
        chosen.update(GROUPS.get(part, (part,)))
    if not chosen:
        raise UsageError("--tasks names no RULER task")
    return [n for n in RULER_TASKS if n in chosen]


# --- word lists and values -----------------------------------------------------------------------


@cache
def wordlist(name: str) -> tuple[str, ...]:
    """One of ``wonderwords``' word lists (``nounlist``, ``adjectivelist``, ``verblist``), as RULER reads it."""
    from importlib.resources import files

    try:
        text = (files("wonderwords") / "assets" / f"{name}.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        raise UsageError("RULER's tasks draw words from the wonderwords package: pip install wonderwords") from None
    return tuple(w.rstrip() for w in text.splitlines() if w.strip())


@cache
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """RULER's niah keys are the sorted set of adjective-noun pairs; a uniform draw from it is a
    uniform draw of each part from its sorted, deduplicated list (6 million pairs, never built)."""
    return tuple(sorted(set(wordlist("adjectivelist")))), tuple(sorted(set(wordlist("nounlist"))))


@cache
def common_words() -> tuple[str, ...]:
    """RULER's cwe vocabulary: nouns, adjectives and verbs, sorted."""
    return tuple(sorted(set(wordlist("nounlist") + wordlist("adjectivelist") + wordlist("verblist"))))


def draw_value(kind: str, rng: np.random.Generator) -> str:
    if kind == "numbers":
        return str(int(rng.integers(10**6, 10**7)))  # 7 digits
    if kind == "uuids":
        return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))
    adjectives, nouns = key_words()
    return f"{adjectives[int(rng.integers(len(adjectives)))]}-{nouns[int(rng.integers(len(nouns)))]}"


# --- fitting a prompt to a length ------------------------------------------------------------------


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def prompt_ids(tokenizer, form: PromptFormat | None, content: str, answer_prefix: str) -> list[int]:
    """The prompt as RULER puts it: the task text, then the answer prefix (in ``chat``, the task text
    as the user's turn and the answer prefix after the assistant header)."""
    if form is not None and form.name == "chat":
        return list(form.user_prefix) + _ids(tokenizer, content) + list(form.assistant_prefix) + \
            _ids(tokenizer, answer_prefix)
    return _ids(tokenizer, content + answer_prefix)


def largest_fitting(build: Callable[[int], list[int]], room: int, start: int = 8) -> tuple[int, list[int]]:
    """The largest haystack size ``n`` whose prompt ``build(n)`` has at most ``room`` tokens (doubling,
    then bisecting), and that prompt; a task that does not fit even with no haystack is refused."""
    low, prompt = 0, build(0)
    if len(prompt) > room:
        raise UsageError(f"this length leaves {room} tokens for the prompt: too short for the task's template")
    high = start
    while len(candidate := build(high)) <= room:
        low, prompt, high = high, candidate, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        candidate = build(mid)
        if len(candidate) <= room:
            low, prompt = mid, candidate
        else:
            high = mid
    return low, prompt


# --- the generators --------------------------------------------------------------------------------


def _query_text(queries: Sequence[str]) -> str:
    return queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]


def _singular(text: str) -> str:
    """RULER's wording for one asked value: its substring replacements on the whole template."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(old, new)
    return text


def _slots(places: Sequence[float], n: int) -> list[int]:
    """Distinct line slots in ``range(n)``, ascending, for ``places`` (fractions) sorted: RULER draws
    them without replacement (``random.sample``), so no two inserted lines are adjacent. A slot
    taken is moved to the next free one (from the end back, past the last line)."""
    out: list[int] = []
    for slot in sorted(min(int(p * n), n - 1) for p in places):
        out.append(max(slot, out[-1] + 1) if out else slot)
    for j in range(len(out) - 1, -1, -1):
        out[j] = min(out[j], (out[j + 1] if j + 1 < len(out) else n) - 1)
    return out


def _insert(units: list[str], needles: Sequence[str], places: Sequence[float]) -> list[str]:
    """``needles`` among ``units`` at fractions ``places`` of them, each at its own line slot."""
    out = list(units)
    ordered = [needle for _, needle in sorted(zip(places, needles), key=lambda x: x[0])]
    for j, (slot, needle) in enumerate(zip(_slots(places, len(units)), ordered)):
        out.insert(slot + j, needle)
    return out


def niah(task: RulerTask, tokenizer, length: int, rng: np.random.Generator, form: PromptFormat | None = None,
         essay: Sequence[str] = ()) -> TaskSample:
    """A needle-in-a-haystack sample of RULER's kind ``task`` (single, multikey, multivalue, multiquery)."""
    num_k = max(task.num_k, task.num_q)
    keys = [draw_value(task.type_k, rng) for _ in range(num_k)]
    values = [[draw_value(task.type_v, rng) for _ in range(task.num_v)] for _ in range(num_k)]
    needles = [NEEDLE.format(type_v=task.type_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    needles = [needles[i] for i in rng.permutation(len(needles))]
    asked = rng.choice(num_k, task.num_q, replace=False).tolist()  # in the order drawn, as RULER asks them
    references = [v for i in asked for v in values[i]]
    query = _query_text([keys[i] for i in asked])
    template, answer_prefix = TEMPLATES["niah"]
    type_v = task.type_v
    if task.num_q * task.num_v == 1:
        template, answer_prefix, type_v = _singular(template), _singular(answer_prefix), type_v[:-1]
    if task.haystack == "essay":
        if not essay:
            raise UsageError(f"{task.name}: the essay haystack is empty")
        depths = rng.choice(ESSAY_DEPTHS, len(needles), replace=False) / 100
        distractors: list[str] = []
        places = sorted(depths.tolist())
    else:
        places = rng.random(len(needles)).tolist()
        # the distractor needles: fresh keys and values, as many as the prompt takes (drawn once, cut to size)
        distractors = []

    def context(n: int) -> str:
        if task.haystack == "essay":
            from ropestretch.data.corpus import sentences

            sents = sentences(" ".join(essay[:n]))
            cuts = [0] + [int(len(sents) * p) for p in places] + [len(sents)]
            parts = []
            for i in range(1, len(cuts)):
                parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
                if i - 1 < len(needles):
                    parts.append(needles[i - 1])
            return " ".join(p for p in parts if p)
        if task.haystack == "repeat":
            units = [NOISE] * n
        else:
            while len(distractors) < n:
                distractors.append(NEEDLE.format(type_v=task.type_v, key=draw_value(task.type_k, rng),
                                                 value=draw_value(task.type_v, rng)))
            units = distractors[:n]
        return "\n".join(_insert(units, needles, places))

    def build(n: int) -> list[int]:
        return prompt_ids(tokenizer, form, template.format(type_v=type_v, context=context(n), query=query),
                          answer_prefix.format(type_v=type_v, query=query))

    size, prompt = largest_fitting(build, length - task.budget)
    return _sample(task, prompt, references, tokenizer, " " + ", ".join(references) + ".",
                   {"haystack": size, "needle_at": places})


def _chain(rng: np.random.Generator, letters: int, hops: int) -> tuple[list[str], list[str], str]:
    names: list[str] = []
    while len(names) < hops + 1:  # distinct, as RULER redraws a repeated name
        name = "".join(rng.choice(list(string.ascii_uppercase), letters))
        if name not in names:
            names.append(name)
    value = str(int(rng.integers(10000, 99999)))
    statements = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
    return names, statements, value


def _vt_text(statements: Sequence[str], n: int, places: Sequence[float], value: str, template: str) -> str:
    """The chain's statements in order among ``n`` noise lines, at random spacing (RULER: the
    statement ``j`` at ``positions[j] + j``)."""
    sentences = [NOISE + "\n"] * n
    for j, slot in enumerate(_slots(places, n)):
        sentences.insert(slot + j, statements[j])
    return template.format(context=" ".join(sentences).replace(". \n", ".\n"), query=value)


def vt(task: RulerTask, tokenizer, length: int, rng: np.random.Generator, form: PromptFormat | None = None,
       essay: Sequence[str] = ()) -> TaskSample:
    """Variable tracking: one chain ``VAR A = 12345``, ``VAR B = VAR A``, ... of 4 hops in noise; the
    answer is every variable holding the value. A one-shot example (3-letter names, about 500
    tokens) comes first, worded as RULER's: the question's last word dropped before its answer."""
    template, prefix = TEMPLATES["vt"]
    # the example, filled to RULER's 500 tokens with the answer
    ex_names, ex_statements, ex_value = _chain(rng, 3, 4)
    ex_places = rng.random(len(ex_statements)).tolist()
    ex_prefix = prefix.format(num_v=5, query=ex_value)

    def example(n: int) -> str:
        text = " ".join(_vt_text(ex_statements, n, ex_places, ex_value, template).split())
        return text.rsplit(" ", 1)[0] + ex_prefix + " " + " ".join(ex_names) + "\n\n"

    ex_size = largest_fitting(lambda n: _ids(tokenizer, example(n)), 500 - BUDGETS["vt"], start=4)[0]
    shot = " " + example(ex_size) + "\n\n"
    names, statements, value = _chain(rng, 5, 4)
    places = rng.random(len(statements)).tolist()
    answer_prefix = prefix.format(num_v=5, query=value)

    def build(n: int) -> list[int]:
        return prompt_ids(tokenizer, form, shot + _vt_text(statements, n, places, value, template), answer_prefix)

    size, prompt = largest_fitting(build, length - task.budget)
    return _sample(task, prompt, names, tokenizer, " ".join(names), {"haystack": size, "needle_at": places})


def _word_list(words: Sequence[str], rng: np.random.Generator, count: int, common: int, rare: int
               ) -> tuple[list[str], list[str]]:
    """RULER's cwe list: ``count`` distinct words, the first 10 repeated ``common`` times, the rest
    ``rare`` times, shuffled; numbered "1. w 2. w ...". Returns the list and the 10 common words."""
    chosen = [words[i] for i in rng.choice(len(words), count, replace=False)]
    listed = chosen[:10] * common + chosen[10:] * rare
    return [listed[i] for i in rng.permutation(len(listed))], chosen[:10]


def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe(task: RulerTask, tokenizer, length: int, rng: np.random.Generator, form: PromptFormat | None = None,
        essay: Sequence[str] = ()) -> TaskSample:
    """Common words extraction: a numbered list where 10 words appear 30 times and the others 3
    (6 and 1 below 4096 tokens), after a one-shot example of 40 words (10 x 10, 30 x 3; below 4096:
    20 words, 3 and 1); the answer is the 10 common words."""
    template, answer_prefix = TEMPLATES["cwe"]
    words = common_words()
    short = length < 4096
    example_list, example_common = _word_list(words, rng, 20 if short else 40, 3 if short else 10, 1 if short else 3)
    shot = template.format(context=_numbered(example_list)) + answer_prefix + _numbered(example_common) + "\n"
    order = rng.permutation(len(words))
    pool = [words[i] for i in order]  # the real list's words: the first count of one fixed order
    common_n, rare_n = (6, 1) if short else (30, 3)
    shuffle_seed = int(rng.integers(2**31))

    def listing(n: int) -> tuple[list[str], list[str]]:
        chosen = pool[:n]
        listed = chosen[:10] * common_n + chosen[10:] * rare_n
        perm = np.random.default_rng(shuffle_seed).permutation(len(listed))
        return [listed[i] for i in perm], chosen[:10]

    def build(n: int) -> list[int]:
        return prompt_ids(tokenizer, form, shot + template.format(context=_numbered(listing(10 + n)[0])),
                          answer_prefix)

    size, prompt = largest_fitting(build, length - task.budget)
    if size + 10 > len(words):
        raise UsageError(f"cwe at {length} tokens needs more words than the word lists hold")
    references = listing(10 + size)[1]
    return _sample(task, prompt, references, tokenizer, _numbered(references), {"haystack": 10 + size})


def fwe(task: RulerTask, tokenizer, length: int, rng: np.random.Generator, form: PromptFormat | None = None,
        essay: Sequence[str] = (), alpha: float = 2.0) -> TaskSample:
    """Frequent words extraction: coded 6-letter words with Zipf frequencies (alpha 2) over a
    vocabulary of length / 50 words, the most frequent replaced by "..."; the answer is the next three."""
    from scipy.special import zeta

    size = max(4, length // 50)
    vocab: set[str] = set()
    while len(vocab) < size:
        vocab.add("".join(rng.choice(list(string.ascii_lowercase), 6)))
    words = sorted(vocab)
    words = [words[i] for i in rng.permutation(len(words))]
    words[0] = "..."
    shuffle_seed = int(rng.integers(2**31))
    template, answer_prefix = TEMPLATES["fwe"]

    def text(n: int) -> str:
        counts = [int(n * (k + 1) ** -alpha / zeta(alpha)) for k in range(len(words))]
        listed = [w for w, c in zip(words, counts) for _ in range(c)]
        perm = np.random.default_rng(shuffle_seed).permutation(len(listed))
        return " ".join(listed[i] for i in perm)

    def build(n: int) -> list[int]:
        return prompt_ids(tokenizer, form, template.format(context=text(n)), answer_prefix)

    n, prompt = largest_fitting(build, length, start=64)  # RULER keeps no room for fwe's answer
    references = words[1:4]
    return _sample(task, prompt, references, tokenizer, " " + " ".join(references), {"haystack": n})


GENERATORS = {"niah": niah, "vt": vt, "cwe": cwe, "fwe": fwe}


def _sample(task: RulerTask, prompt: list[int], references: Sequence[str], tokenizer, gold: str,
            info: dict) -> TaskSample:
    return TaskSample(task.name, prompt, ", ".join(references), _ids(tokenizer, gold),
                      {"length": len(prompt), **info}, references=tuple(references), budget=task.budget)


def sample(name: str, tokenizer, length: int, rng: np.random.Generator, form: PromptFormat | None = None,
           essay: Sequence[str] = ()) -> TaskSample:
    """One sample of the RULER task ``name`` whose prompt and generation budget fit ``length`` tokens."""
    task = RULER_TASKS[name]
    try:
        return GENERATORS[task.kind](task, tokenizer, check_length(length), rng, form, essay)
    except UsageError as err:
        raise UsageError(f"{name} at {length} tokens: {err}") from None


def essay_words(documents: Sequence[str] | None = None) -> list[str]:
    """The essay haystack as RULER holds it: the text's words in order (default: the built-in English)."""
    from ropestretch.data.corpus import builtin_documents

    return " ".join(documents if documents is not None else builtin_documents()).split()
