"""Facts about the current process that replicas and actors report in their stats."""
from __future__ import annotations

import os
import resource


def rss_bytes() -> int | None:
    """Resident memory now (Linux /proc); None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def peak_rss_bytes() -> int:
    """The highest resident memory this process has had (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory() -> dict:
    return {"rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes(), "pid": os.getpid()}
