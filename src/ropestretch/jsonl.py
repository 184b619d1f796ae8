"""JSON lines: the format of training logs and evaluation results, appended as work finishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of ``path`` ([] if absent); a line cut short by a kill is skipped."""
    from ropestretch.errors import UsageError

    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start}); it is not a ropestretch log") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
