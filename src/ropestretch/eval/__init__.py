"""Evaluation beyond the window: retrieval sweeps, perplexity vs length, lm-evaluation-harness.

:func:`run` evaluates a model on one task into a run folder (:mod:`ropestretch.eval.sweep`); the
tasks are the registry :data:`TASKS` (:mod:`ropestretch.eval.tasks`), the engines the registry
:data:`BACKENDS` (:mod:`ropestretch.eval.backends`). Below it, :func:`load_for_eval` loads a
checkpoint; :class:`~ropestretch.eval.retrieval.Evaluator` holds a backend with the scoring mode;
the ``run_*`` functions sweep their cells into a :class:`~ropestretch.eval.store.RunStore`.
"""

from __future__ import annotations

import importlib

# what the package offers, and the module that holds it: imported on first use, so that reading the
# task registry (the CLI's parser) does not import torch
_WHERE = {"token_stream": "ropestretch.data.corpus", "load_eval_tokenizer": "ropestretch.eval.loading",
          "load_for_eval": "ropestretch.eval.loading", "run_ppl": "ropestretch.eval.perplexity",
          "Evaluator": "ropestretch.eval.retrieval", "run_kv": "ropestretch.eval.retrieval",
          "run_lines": "ropestretch.eval.retrieval", "run_needle": "ropestretch.eval.retrieval",
          "run_passkey": "ropestretch.eval.retrieval", "RunStore": "ropestretch.eval.store",
          "read_results": "ropestretch.eval.store", "run": "ropestretch.eval.sweep", "TASKS": "ropestretch.eval.tasks",
          "BACKENDS": "ropestretch.eval.backends"}
__all__ = ["TESTS", *_WHERE]


def __getattr__(name: str):
    if name == "TESTS":  # the registered task names (the spelling before the registry)
        return tuple(importlib.import_module("ropestretch.eval.tasks").TASKS)
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ropestretch.eval' has no attribute {name!r}")
