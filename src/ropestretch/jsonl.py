"""JSON lines: the format of training logs and evaluation results, appended as work finishes; and
the whole-file write that records beside them use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | Path, what: str = "a ropestretch record") -> Any:
    """The JSON in ``path``, or one :class:`UsageError` naming the file when it cannot be read,
    is not UTF-8, is not JSON, or nests too deeply for Python's parser."""
    from ropestretch.errors import UsageError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start}); it is not {what}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); it is not {what}") from None
    except (ValueError, RecursionError):
        raise UsageError(f"{path} is not JSON that can be read (nested too deeply); it is not {what}") from None


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
        except (ValueError, RecursionError):  # cut short by a kill, or nested past what Python parses
            continue
    return rows


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """One line at the end of ``path``; a last line cut short by a kill is ended first, so it stays
    one skipped line and does not swallow this one."""
    with open(path, "a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(record) + "\n").encode("utf-8"))
        fh.flush()


def write_whole(path: str | Path, text: str) -> None:
    """``text`` as the whole of ``path``, through a temporary file beside it: a run stopped while
    writing leaves the old file whole, never half of the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:  # a full disk, an interrupt: the old file stays, and no half of the new one
        tmp.unlink(missing_ok=True)
        raise
