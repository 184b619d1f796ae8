"""The evaluation task registry (:data:`TASKS`), like ``SCALINGS`` and ``SAMPLERS``; the built-in
entries are in :mod:`ropestretch.eval.tasks`.

An entry holds everything the rest of the project needs to know about a task: its help, its default
samples per cell, the options it takes (CLI flags, library keywords and run-record keys alike), its
sweep (which cells, how a prompt is generated and scored), where in the context a cell asks (a
depth, a gold position, or nowhere in particular), what one independent unit of its samples is,
and how ``report`` shows it. The CLI's ``ropestretch eval NAME`` subcommands, the run record
(:func:`recorded_arguments`), the report's sections and row checks and the pairing
(:mod:`ropestretch.compare`) all read the entries; nothing else lists task names.

Adding a task is one :func:`register_task` call (``tests/test_eval_core.py`` adds a test-only task
and finds it in the CLI, the store, the report and the pairing).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ropestretch.errors import UsageError
from ropestretch.options import Option, option_values  # noqa: F401  (re-exported: a task's options)


def float_list(low: float, high: float, what: str) -> Callable[[str], list[float]]:
    """argparse type: comma-separated numbers within [low, high]."""
    def parse(text: str) -> list[float]:
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values or any(not low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"{what} must lie in [{low:g}, {high:g}], got {text!r}")
        return values
    return parse


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    from ropestretch.cli import positive_int as parse

    return parse(text)


@dataclass(frozen=True)
class Place:
    """Where in the context a task's cells ask: the cell key, its factor to percent, and its names."""

    key: str  # "depth" (percent already) or "gold" (a fraction of the context)
    percent: float  # cell value x percent = percent of the context
    plural: str  # "depths", "gold positions"
    axis: str  # the by-place figure's x label
    figure: str  # the by-place figure's file name stem ("depth" -> passkey-by-depth.png)


DEPTH = Place("depth", 1.0, "depths", "depth of the needle (%)", "depth")
GOLD = Place("gold", 100.0, "gold positions", "position of the queried key in the context (%)", "position")


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    ``measure`` is ``retrieval`` (each sample right or wrong, with its answer's log-likelihood and
    prompt fingerprint; takes ``--scoring`` and ``--prompt``) or ``perplexity`` (windows' NLL).
    ``cells(lengths, options)`` lists the grid; ``run(ev, store, lengths, samples, seed, options)``
    sweeps it into the store. ``place`` is None for a task whose cells ask nowhere in particular;
    ``unit`` is ``sample`` or ``draw`` (one draw placed at every place is one independent unit).
    ``views`` names what the report adds to a retrieval task's accuracy and log-likelihood tables:
    ``middle`` (a table of the 25-75% band), ``by_place`` (accuracy by place, a figure), ``heatmap``
    (place x length, a figure per run), ``place_table`` (accuracy by place over all lengths).
    ``haystack``: its prompts are built in a prose haystack (``--text``). ``record`` holds fixed
    entries of the run record (a change of method that makes older runs' results incomparable: they
    are then refused a rerun, not mixed). ``scoring``: its default (RULER's tasks generate);
    ``suite``: the suite it is run in (``ropestretch eval ruler``); ``past_length``: how far past a
    cell's length its generation may reach."""

    name: str
    help: str
    title: str
    samples: int
    measure: str
    cells: Callable[[list[int], dict[str, Any]], list[dict[str, Any]]]
    run: Callable[..., list[dict[str, Any]]]
    options: tuple[Option, ...] = ()
    place: Place | None = None
    unit: str = "sample"
    views: tuple[str, ...] = ()
    record: dict[str, Any] = field(default_factory=dict)
    haystack: bool = False  # whether its prompts are built in a prose haystack (--text)
    text_help: str = "haystack text: a file or folder (default: the English that ships with Python)"
    scoring: str = "forced"  # its default scoring (a retrieval task)
    suite: str | None = None  # the suite it belongs to (``ruler``): run by ``eval SUITE``, not by its own subcommand
    past_length: int = 0  # tokens it may generate past a cell's length (RULER's fwe: its budget)

    @property
    def retrieval(self) -> bool:
        return self.measure == "retrieval"

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every option's value (its default where not given); an option the task lacks is refused."""
        return option_values(self.options, given, f"eval {self.name}")

    def where(self, cell: dict[str, Any]) -> float | None:
        """Where a cell asks, in percent of the context, or None."""
        return None if self.place is None else self.place.percent * float(cell[self.place.key])


TASKS: dict[str, Task] = {}


def recorded_path(value: str | None, folder) -> str | None:
    """A path as a run record keeps it: relative to the run folder when it is a local path (so that a
    committed run reruns from any checkout), else as given (a hub id, a bundled model name)."""
    import os
    from pathlib import Path

    if value is None or not Path(value).exists():
        return value
    return os.path.relpath(Path(value).resolve(), Path(folder).resolve())


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (a name already there is refused)."""
    if task.name in TASKS:
        raise ValueError(f"evaluation task {task.name!r} is already registered")
    if task.scoring not in ("forced", "generate"):
        raise ValueError(f"task {task.name!r}: scoring must be forced or generate")
    if task.measure not in ("retrieval", "perplexity"):
        raise ValueError(f"task {task.name!r}: measure must be retrieval or perplexity")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UsageError(f"unknown evaluation task {name!r} (one of {', '.join(TASKS)})")
    return TASKS[name]


def recorded_arguments(task: str | Task, model: str, lengths: list[int], samples: int, seed: int,
                       text: str | None, options: dict[str, Any], scoring: str = "forced",
                       prompt: str | None = None, backend: str = "transformers", *, dtype: str,
                       folder) -> dict[str, Any]:
    """The arguments a task's results depend on, as a run folder records them: a rerun with the same
    ones resumes, different ones are refused. ``dtype`` is what the model runs in (``fp32``, ``bf16``,
    ``fp16``), never ``auto``; ``backend`` is recorded where it is not transformers (older folders
    hold transformers runs and no backend key)."""
    task = get_task(task) if isinstance(task, str) else task
    args: dict[str, Any] = {"model": recorded_path(model, folder), "lengths": lengths, "samples": samples,
                            "seed": seed, "text": recorded_path(text, folder), "dtype": dtype}
    args.update(task.resolve(options))
    args.update(task.record)
    if task.retrieval:
        args["scoring"] = scoring
        args["prompt"] = prompt  # older run folders have none: their prompts differ, so they are not mixed
    if backend != "transformers":
        args["backend"] = backend
    return args


