"""Paths a command writes, checked before anything is written: named (not empty, not ``.``),
outside every folder being read, new (nothing a user has is overwritten), and built in a staging
folder that one rename puts in place."""

from __future__ import annotations

import os
from pathlib import Path

from ropestretch.errors import UsageError


def named_path(value: str | os.PathLike, what: str) -> Path:
    """A path a user gave for something to be written: not empty, and naming a file or folder of
    its own (not ``.`` or ``..``, which name the folder a command runs in or its parent)."""
    text = os.fspath(value)
    if not text.strip():
        raise UsageError(f"{what} is empty; give a path")
    path = Path(text)
    if path.name in ("", ".", ".."):
        raise UsageError(f"{what} {text!r} names no new file or folder of its own; give a new name such as "
                         f"{what.lstrip('-')}-out")
    return path


def outside(path: str | os.PathLike, reading: dict[str, str | os.PathLike | None], what: str) -> Path:
    """``path`` (to be written) unless it lies in, or is, a folder being read (``reading``: its role
    -> path): writing there would copy a folder into itself or change what is read."""
    path = Path(path)
    target = path.resolve()
    for role, folder in reading.items():
        if folder is None or not Path(folder).is_dir():
            continue
        root = Path(folder).resolve()
        if target == root or root in target.parents:
            raise UsageError(f"{what} {path} is inside the {role} {folder}, which this command reads; "
                             "write somewhere else")
    return path


def new_folder(value: str | os.PathLike, what: str = "--out", reading: dict | None = None) -> Path:
    """A folder a command is to create and fill: named (:func:`named_path`), not a symbolic link,
    empty or absent, and outside every folder being read (:func:`outside`)."""
    path = named_path(value, what)
    if path.is_symlink():
        raise UsageError(f"{what} {path} is a symbolic link; give the path of a new folder instead")
    outside(path, reading or {}, what)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"output folder {path} already exists and is not empty; choose a new one")
    return path


STAGING_MARK = ".ropestretch-staging"


def staging_folder(dst: Path) -> Path:
    """A new, empty sibling ``.<name>.partial`` to build ``dst`` in before one rename puts it in
    place. A leftover from an interrupted run of ours (it holds :data:`STAGING_MARK`) is cleared;
    anything else at that path is the user's and is refused, never removed."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.is_symlink() or (tmp.exists() and not (tmp.is_dir() and (tmp / STAGING_MARK).is_file())):
        raise UsageError(f"{tmp} is in the way of writing {dst} and was not made by ropestretch; move it "
                         "or choose another output path")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        (tmp / STAGING_MARK).write_text("ropestretch builds a checkpoint here; it is renamed into place when done\n")
    except OSError as err:
        raise UsageError(f"cannot create {tmp}: {err.strerror}") from None
    return tmp


def new_file(path: str | os.PathLike, suffix: str, what: str, reading: dict | None = None,
             create: bool = True) -> Path:
    """An output file the user named: the right suffix, not there yet (nothing is overwritten),
    outside every folder being read (:func:`outside`), and its folder created if missing (with
    ``create``; without, the writer creates it once nothing can refuse the run any more)."""
    path = outside(named_path(path, what), reading or {}, what)
    if not str(path).lower().endswith(suffix):
        raise UsageError(f"{what} takes a {suffix} file name, got {path}")
    if path.exists():
        raise UsageError(f"{path} already exists; choose a new file name")
    if not create:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the folder of {path}: {err.strerror}") from None
    return path


def cache_dir() -> Path:
    """``$ROPESTRETCH_CACHE``, else ``$XDG_CACHE_HOME/ropestretch``, else ``~/.cache/ropestretch``."""
    if os.environ.get("ROPESTRETCH_CACHE"):
        return Path(os.environ["ROPESTRETCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ropestretch"
