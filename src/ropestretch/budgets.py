"""What a request will take, checked before anything is allocated: :func:`check_fits` refuses, with
the estimate in its one line, a request whose memory would not fit in what this machine has free
(histogram bins x pairs, position samples x row length, coverage arrays over the target, the KV
cache of the longest evaluation); :func:`check_histogram` refuses one that would take hours."""

from __future__ import annotations

import os

from ropestretch.errors import UsageError


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


ANGLES_PER_SECOND = 1e8  # rotary angles binned per second on one CPU core, roughly


def check_histogram(pairs: int, bins: int, length: int) -> None:
    """DPRoPE's histograms: ``pairs x bins`` counts in memory, ``pairs x length`` angles of work."""
    check_fits(pairs * bins * 40, f"rotary-angle histograms of {pairs} pairs x {bins} bins")
    hours = pairs * length / ANGLES_PER_SECOND / 3600
    if hours > 1:
        raise UsageError(f"rotary-angle histograms over {length:,} positions x {pairs} pairs would take about "
                         f"{hours:,.0f} hours; choose a shorter target")
