"""One writer per run folder: :func:`folder_lock` takes an exclusive lock on a folder for the life of
one ``train``, ``eval`` or ``demo`` process (``filelock``: an OS lock, released when the process
ends, so a killed process leaves no stale lock). A second writer is told who holds it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ropestretch.errors import UsageError

LOCK_FILE = ".ropestretch.lock"


def _holds_only_lock(folder: Path) -> bool:
    """Nothing but the lock file and empty folders (which a library may create before any work)."""
    return folder.is_dir() and all(p.name == LOCK_FILE or (p.is_dir() and _holds_only_lock(p))
                                   for p in folder.iterdir())


def is_empty(folder: Path) -> bool:
    """A folder that holds nothing but (perhaps) ropestretch's lock file."""
    return not folder.exists() or _holds_only_lock(folder)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs; a folder this call created and left empty is
    removed again, so a run that failed before doing any work leaves nothing behind."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        if created:
            folder.rmdir()
        raise UsageError(f"{folder} is in use by another ropestretch process; wait for it to finish "
                         "or choose another folder") from None
    try:
        yield
    finally:
        lock.release()
        if _holds_only_lock(folder):  # no work was done: leave nothing that blocks a corrected rerun
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
                for sub in sorted(folder.rglob("*"), reverse=True):
                    sub.rmdir()
                if created:
                    folder.rmdir()
