"""The "loky" backend: a private joblib loky executor (spawn-based, robust to crashes).

Not ``get_reusable_executor``: that executor is process-wide shared state, and asking it
for another initializer (another dataset) shuts down the pool whoever else is using it.
A private ``loky.ProcessPoolExecutor`` gives the same workers, its own lifetime, and
``env`` to set the thread limits before the children import numpy.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor

from joblib.externals.loky import ProcessPoolExecutor as LokyExecutor

from flirdata.backends._pool import PoolBackend
from flirdata.backends._worker import THREAD_ENV, install_fetcher
from flirdata.backends.protocol import BackendKind, TaskFunction

__all__ = ["KIND", "make_loky_backend"]

KIND = BackendKind(parallel=True, uses_threads=False, needs_semaphores=True)


def _shutdown(executor: Executor, wait: bool = True) -> None:
    # Not kill_workers=True: with it, loky 3.6 calls set_exception() on the futures the
    # loader has just cancelled, its manager thread dies of InvalidStateError and the
    # workers are left running. Running tasks (one batch per worker) finish instead.
    # (Its shutdown takes no cancel_futures.)
    executor.shutdown(wait=wait)


def make_loky_backend(fetcher: TaskFunction, workers: int, prefetch: int, timeout: float | None = None) -> PoolBackend:
    """Loky workers (no idle timeout: they live until ``close``), one thread per library."""
    executor = LokyExecutor(
        max_workers=workers,
        initializer=install_fetcher,
        initargs=(fetcher, os.getpid()),
        env=THREAD_ENV,
    )
    return PoolBackend("loky", executor, _shutdown, workers, prefetch, timeout=timeout)
