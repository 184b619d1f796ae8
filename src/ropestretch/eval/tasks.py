"""The built-in evaluation tasks, each one entry of the registry (:mod:`ropestretch.eval.registry`):
passkey, needle, LongChat-Lines, key-value retrieval, perplexity, and RULER's 11 synthetic tasks
(the ``ruler`` suite, :mod:`ropestretch.data.ruler`). Importing this module registers
them; the registry's names are re-exported here, so ``from ropestretch.eval.tasks import TASKS``
gives the registry with its built-ins."""

from __future__ import annotations

from ropestretch.eval.registry import (  # noqa: F401  (re-exported)
    DEPTH,
    GOLD,
    TASKS,
    Option,
    Place,
    Task,
    float_list,
    positive_int,
    get_task,
    recorded_arguments,
    register_task,
)


def _depths() -> list[float]:
    import numpy as np

    return [round(float(x), 1) for x in np.linspace(0, 100, 10)]


DEPTHS = Option("depths", _depths, "needle depths in percent (default: 10 from 0 to 100)",
                float_list(0, 100, "depths"), "D1,D2,...")


def _by_place(key: str, option: str):
    return lambda lengths, o: [{"length": n, key: p} for n in lengths for p in o[option]]


def _by_length(lengths, o):
    return [{"length": n} for n in lengths]


def _passkey(ev, store, lengths, samples, seed, o):
    from ropestretch.eval.retrieval import run_passkey

    return run_passkey(ev, store, lengths, o["depths"], samples, seed)


def _needle(ev, store, lengths, samples, seed, o):
    from ropestretch.eval.retrieval import run_needle

    return run_needle(ev, store, lengths, o["depths"], samples, seed)


def _lines(ev, store, lengths, samples, seed, o):
    from ropestretch.eval.retrieval import run_lines

    return run_lines(ev, store, lengths, samples, seed)


def _kv(ev, store, lengths, samples, seed, o):
    from ropestretch.eval.retrieval import run_kv

    return run_kv(ev, store, lengths, o["positions"], samples, seed)


def _ppl(ev, store, lengths, samples, seed, o):
    from ropestretch.eval.perplexity import run_ppl

    return run_ppl(ev, store, ev.stream(), lengths, samples, seed, o["mode"], o["stride"])


register_task(Task(
    "passkey", "pass key retrieval, lengths x depths", "Passkey retrieval", 20, "retrieval",
    _by_place("depth", "depths"), _passkey, (DEPTHS,), DEPTH, views=("middle", "by_place"), haystack=True))
register_task(Task(
    "needle", "needle in a haystack, lengths x depths", "Needle in a haystack", 10, "retrieval",
    _by_place("depth", "depths"), _needle, (DEPTHS,), DEPTH, unit="draw", views=("middle", "by_place", "heatmap"),
    # older runs drew one haystack per length: their results are not reused
    record={"haystack": "one per sample"}, haystack=True))
register_task(Task(
    "lines", "LongChat-Lines, by length", "LongChat-Lines", 50, "retrieval", _by_length, _lines))
register_task(Task(
    "kv", "key-value retrieval, lengths x gold positions", "Key-value retrieval (lost in the middle)", 20, "retrieval",
    _by_place("gold", "positions"), _kv,
    (Option("positions", lambda: [0, 0.25, 0.5, 0.75, 1.0], "queried key's place in the object, 0 = first, 1 = last",
            float_list(0, 1, "gold positions"), "P1,P2,..."),), GOLD, views=("by_place", "place_table")))
register_task(Task(
    "ppl", "perplexity vs length", "Perplexity vs length", 8, "perplexity", _by_length, _ppl,
    (Option("mode", "truncate", "truncate: windows of each length drawn from the text; sliding: a span scored by "
            "windows moved by --stride", choices=("truncate", "sliding")),
     Option("stride", None, "sliding mode: window step (default length / 2)", positive_int)),
    text_help="perplexity text: a file or folder (default: the English that ships with Python)"))


def _ruler(name: str):
    def run(ev, store, lengths, samples, seed, o):
        from ropestretch.eval.retrieval import run_ruler

        return run_ruler(ev, store, name, lengths, samples, seed)
    return run


def _register_ruler() -> None:
    from ropestretch.data.ruler import RULER_TASKS

    for name, spec in RULER_TASKS.items():
        essay = spec.haystack == "essay"
        register_task(Task(
            name, f"RULER {name}: {spec.help}", f"RULER {name}", 20, "retrieval", _by_length, _ruler(name),
            record={"definition": "RULER e40fae1"}, scoring="generate", suite="ruler",
            past_length=spec.budget if name == "fwe" else 0,
            text_help="essay haystack: a file or folder (default: the English that ships with Python)" if essay
            else "unused by this task"))


_register_ruler()
