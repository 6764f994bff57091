"""How many cores this process may run on: what worker counts are judged against.

Asked by the backends' over-subscription check, by Ray's private local instance (its CPUs), by
the synthesizer's pool and by the benchmarks' machine line.
"""

from __future__ import annotations

import os

__all__ = ["usable_cores"]


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
