"""What a request will take, checked before anything is allocated, and one writer per run folder.

- :func:`check_fits` refuses, with the estimate in its one line, a request whose memory would not
  fit in what this machine has available (histogram bins x pairs, position samples x row length,
  coverage arrays over the target, the KV cache of the longest evaluation).
- :func:`folder_lock` takes an exclusive lock on a run folder for the life of one ``train``,
  ``eval`` or ``demo`` process (``filelock``: an OS lock, released when the process ends, so a
  killed process leaves no stale lock). A second writer is told who holds it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ropestretch.errors import UsageError

LOCK_FILE = ".ropestretch.lock"


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PB"


def check_fits(nbytes: float, what: str, fraction: float = 0.8) -> None:
    """Refuse ``what`` when it needs more than ``fraction`` of the available memory."""
    free = available_memory()
    if nbytes > fraction * free:
        raise UsageError(f"{what} needs about {human(nbytes)}, more than this machine has free ({human(free)})")


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


ANGLES_PER_SECOND = 1e8  # rotary angles binned per second on one CPU core, roughly


def check_histogram(pairs: int, bins: int, length: int) -> None:
    """DPRoPE's histograms: ``pairs x bins`` counts in memory, ``pairs x length`` angles of work."""
    check_fits(pairs * bins * 40, f"rotary-angle histograms of {pairs} pairs x {bins} bins")
    hours = pairs * length / ANGLES_PER_SECOND / 3600
    if hours > 1:
        raise UsageError(f"rotary-angle histograms over {length:,} positions x {pairs} pairs would take about "
                         f"{hours:,.0f} hours; choose a shorter target")


def kv_cache_bytes(config: dict, length: int, dtype_bytes: int = 4) -> int:
    """Bytes of the keys and values one sequence of ``length`` tokens keeps in every layer."""
    from ropestretch.rope.config import text_section, with_class_defaults

    c = with_class_defaults(text_section(config))
    heads = c.get("num_key_value_heads") or c.get("num_attention_heads") or 1
    head_dim = c.get("head_dim") or (c.get("hidden_size", 0) // max(1, c.get("num_attention_heads") or 1))
    layers = c.get("num_hidden_layers") or 1
    return int(2 * layers * heads * head_dim * length * dtype_bytes)


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
