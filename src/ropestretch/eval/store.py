"""A run folder: each test's arguments, and its results as JSON lines appended cell by cell.

A rerun with the same arguments skips finished cells, so an interrupted sweep loses nothing; a
run folder holding results of different arguments for the same test is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError
from ropestretch.eval.registry import recorded_path  # noqa: F401  (the run record's spelling of a path)
from ropestretch.jsonl import append_jsonl, read_jsonl, write_whole

ARGS_FILE = "eval-args.json"
RESULTS_FILE = "results.jsonl"


def run_arguments(test: str, model: str, lengths: list[int], samples: int, seed: int, text: str | None = None,
                  depths: list[float] | None = None, positions: list[float] | None = None,
                  scoring: str = "forced", mode: str = "truncate", stride: int | None = None,
                  prompt: str | None = None, *, dtype: str, folder: str | Path) -> dict[str, Any]:
    """The run record of ``test`` with its options given by keyword (the spelling before the task
    registry: :func:`ropestretch.eval.tasks.recorded_arguments`, which takes them as a dict, keeps
    only the ones the task declares)."""
    from ropestretch.eval.tasks import get_task, recorded_arguments

    task = get_task(test)
    given = {"depths": depths, "positions": positions, "mode": mode, "stride": stride}
    options = {o.name: given.get(o.name) for o in task.options}
    return recorded_arguments(task, model, lengths, samples, seed, text, options, scoring, prompt, dtype=dtype,
                              folder=folder)


def cell_key(cell: dict[str, Any]) -> str:
    return json.dumps(cell, sort_keys=True)


class RunStore:
    """One test's results in a run folder. The test's arguments are recorded with its first result,
    so a run that failed before finishing a cell leaves nothing that refuses a corrected command."""

    def __init__(self, folder: str | Path, test: str, args: dict[str, Any], stamp: dict[str, Any] | None = None):
        from ropestretch.locks import is_empty

        self.folder, self.test, self.args = Path(folder), test, args
        self.stamp = dict(stamp or {})  # added to every row this store writes (the backend that ran it)
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"run folder {self.folder} is a file")
        recorded = self._read_args()
        previous = recorded.get(test)
        if previous is not None and previous != args:
            differs = sorted(k for k in set(previous) | set(args) if previous.get(k) != args.get(k))
            raise UsageError(f"{self.folder} holds {test} results of different arguments "
                             f"(differs in: {', '.join(differs)}); use another run folder")
        if not is_empty(self.folder) and not (self.folder / ARGS_FILE).exists():
            raise UsageError(f"{self.folder} is not empty and is not a ropestretch eval run folder")
        self._recorded = previous is not None
        self.done = {cell_key(r["cell"]): r for r in read_results(self.folder) if r.get("test") == test}

    def _read_args(self) -> dict[str, Any]:
        path = self.folder / ARGS_FILE
        if not path.exists():
            return {}
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(recorded, dict):
                raise ValueError
            return recorded
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise UsageError(f"{path} is unreadable; use another run folder") from None

    def _record_args(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        recorded = self._read_args()
        recorded[self.test] = self.args
        write_whole(self.folder / ARGS_FILE, json.dumps(recorded, indent=2) + "\n")
        self._recorded = True

    def finished(self, cell: dict[str, Any]) -> bool:
        return cell_key(cell) in self.done

    def add(self, cell: dict[str, Any], **values: Any) -> dict[str, Any]:
        if not self._recorded:
            self._record_args()
        record = {"test": self.test, "cell": cell, **values, **self.stamp}
        append_jsonl(self.folder / RESULTS_FILE, record)
        self.done[cell_key(cell)] = record
        return record


def read_results(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete result line of a run folder (a line cut by a kill is skipped); a line that is
    JSON but not a result is refused with its number."""
    rows = read_jsonl(Path(folder) / RESULTS_FILE)
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and isinstance(row.get("test"), str) and isinstance(row.get("cell"), dict)):
            raise UsageError(f"{Path(folder) / RESULTS_FILE}: line {number} is not a ropestretch result")
    return iter(rows)
