"""The "process" backend: ``concurrent.futures.ProcessPoolExecutor`` on a fork server."""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor

from flirdata.backends._pool import PoolBackend
from flirdata.backends._spawning import plan_worker_start
from flirdata.backends._worker import forkserver_context, install_fetcher
from flirdata.backends.protocol import BackendKind, TaskFunction

__all__ = ["KIND", "make_process_backend"]

KIND = BackendKind(parallel=True, uses_threads=False, needs_semaphores=True)


def _shutdown(executor: Executor, wait: bool = True) -> None:
    # Running tasks (at most one batch per worker) finish; queued ones are dropped.
    executor.shutdown(wait=wait, cancel_futures=True)


def make_process_backend(
    fetcher: TaskFunction, workers: int, prefetch: int, timeout: float | None = None
) -> PoolBackend:
    """Worker processes forked from the fork server (never plain fork: see _worker.py).

    The task function (``fetcher``: the loader's ``Fetcher`` or any other picklable callable)
    reaches each worker once, through the pool initializer. Workers never re-run the user's
    ``__main__`` unless that function needs something defined there.
    """
    start = plan_worker_start(fetcher, "process")  # before any process starts
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=forkserver_context(),
        initializer=install_fetcher,
        initargs=(fetcher, os.getpid()),
    )
    return PoolBackend("process", executor, _shutdown, workers, prefetch, start, timeout)
