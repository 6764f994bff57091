"""Peak memory of a process tree, sampled by a thread without disturbing what is timed.

PSS (proportional set size) splits each shared page between the processes that map it, so
forked workers sharing the parent's libraries are not counted twice, as a sum of RSS would
count them. Reading it is not free: the kernel walks the page tables of the whole process
(``/proc/PID/smaps_rollup``, ~20 ms of CPU per process once torch is loaded), and on a
2-core machine sampling 5 processes every 0.1 s would eat most of a core. So the sampler
has a ``quiet()`` mode for timed sections, in which it reads only RSS (``/proc/PID/statm``,
microseconds) of the processes it already knows, and PSS is read only at checkpoints the
caller places outside what it times. Where nothing is timed (a whole epoch watched for its
peak), ``sample_pss=True`` has the thread read PSS at every sample instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psutil

from flirdata.tools.bench.machine import process_tree

__all__ = ["MemorySampler", "tree_memory_mb"]

_MB = 2**20


def tree_memory_mb(processes: list[psutil.Process], pss: bool) -> float:
    """Sum of PSS (or, with ``pss=False``, of RSS) in MB; processes that vanished count 0."""
    total = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if pss:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)  # PSS is Linux-only
            else:
                total += proc.memory_info().rss
    return total / _MB


class MemorySampler:
    """Peak PSS and peak RSS (MB) of this process and its children.

    A background thread reads RSS every ``interval`` seconds (and, outside ``quiet()``,
    looks for new children); PSS is read only at ``checkpoint()``, which the caller places
    outside what it times, at moments when everything is allocated (e.g. right after a
    timed window, with the prefetch queue full). With ``sample_pss=True`` the thread reads
    PSS at every sample too (outside ``quiet()``): for runs that are watched, not timed.
    """

    def __init__(self, interval: float = 0.1, sample_pss: bool = False) -> None:
        self.interval = interval
        self.sample_pss = sample_pss
        self.peak_pss_mb = 0.0
        self.peak_rss_mb = 0.0
        self._me = psutil.Process()
        self._known = [self._me]
        self._quiet = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _sample(self, pss: bool) -> None:
        with self._lock:
            if pss or not self._quiet.is_set():
                self._known = process_tree(self._me)  # scanning /proc for children costs ~5 ms
            if pss:
                self.peak_pss_mb = max(self.peak_pss_mb, tree_memory_mb(self._known, pss=True))
            self.peak_rss_mb = max(self.peak_rss_mb, tree_memory_mb(self._known, pss=False))

    def checkpoint(self) -> None:
        """Read PSS of the whole tree now (tens of ms of CPU per process: not while timing)."""
        self._sample(pss=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample(pss=self.sample_pss and not self._quiet.is_set())
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Inside, the thread only reads RSS of the processes it already knows (microseconds)."""
        self._quiet.set()
        try:
            yield
        finally:
            self._quiet.clear()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
