"""The "threads" backend: joblib's threading backend, driven by ``flirdata.mapping.bounded_map``.

OpenCV and numpy release the GIL while they work, so threads overlap the augmentation of
different batches. ``Parallel(return_as="generator")`` is not used: it dispatches a new
task whenever one *finishes*, not when the consumer takes a result, so a slow consumer
(a training step) lets finished batches pile up for the whole epoch. The window here
submits a task only when a batch is taken.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import cv2
from joblib._parallel_backends import FallbackToBackend
from joblib.parallel import ThreadingBackend  # joblib re-exports its backends here

from flirdata.backends._waits import BatchWaits
from flirdata.backends._worker import tune_malloc
from flirdata.backends.protocol import BackendKind, TaskFunction, shm_start_error
from flirdata.errors import WorkerError
from flirdata.mapping import bounded_map

__all__ = ["KIND", "ThreadsBackend"]

KIND = BackendKind(parallel=True, uses_threads=True, needs_semaphores=True)


def _run_unless_cancelled(fn: TaskFunction, task: Any, cancelled: threading.Event) -> Any:
    # A pool thread cannot be interrupted, but a queued task can skip its work.
    return None if cancelled.is_set() else fn(task)


class ThreadsBackend:
    """``workers`` threads share the dataset; ``workers * prefetch`` batches in flight.

    While it is open, OpenCV runs single-threaded (``cv2.setNumThreads(1)``, process-wide):
    its own pool would compete with ours for the same cores.
    """

    name = "threads"

    def __init__(self, fetcher: TaskFunction, workers: int, prefetch: int, timeout: float | None = None) -> None:
        self._fetcher = fetcher
        self.timeout = timeout
        self._waits = BatchWaits(timeout, starting=0)  # threads start at once: no start-up to allow for
        self.depth = workers * prefetch
        self._pool: ThreadingBackend | None = ThreadingBackend()
        try:
            self._pool.configure(n_jobs=workers)
        except FallbackToBackend:  # joblib found no usable semaphores when it was imported, or was told so
            if os.environ.get("JOBLIB_MULTIPROCESSING") == "0":
                raise WorkerError(
                    "flirdata 'threads' backend: cannot start: JOBLIB_MULTIPROCESSING=0 turns off joblib's "
                    "pools, its thread pool too; unset it, or use the 'sequential' backend."
                ) from None
            raise shm_start_error(self.name, "joblib found none usable when it was imported") from None
        self._cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        tune_malloc()

    def imap(self, tasks: Sequence[Any]) -> Iterator[Any]:
        pool = self._pool
        if pool is None:
            raise RuntimeError("flirdata 'threads' backend is closed")
        cancelled = threading.Event()

        def submit(task: Any) -> Any:
            return pool.submit(partial(_run_unless_cancelled, self._fetcher, task, cancelled))

        def abandon(window: deque[Any]) -> None:
            # Wait for the abandoned tasks (queued ones return at once): the threads share
            # one dataset, whose epoch the next iteration may change. At most one timeout in
            # all, and none once a time-out has dropped the pool: its stuck threads are left.
            cancelled.set()
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            for pending in window:
                if self._pool is not pool:
                    return
                pending.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

        def receive(pending: Any) -> Any:
            return pool.retrieve_result_callback(self._result(pending))

        yield from bounded_map(submit, tasks, self.depth, receive=receive, abandon=abandon)

    def _result(self, pending: Any) -> Any:
        try:
            return pending.get(self._waits.next())
        except multiprocessing.TimeoutError as exc:
            self._abandon()
            raise self._waits.expired(self.name) from exc

    def _abandon(self) -> None:
        """Drop a pool whose thread is stuck: a thread cannot be killed, only left to finish.

        ``terminate`` stops the pool's handler threads without joining its workers, so it
        returns at once; the stuck thread ends whenever its call returns.
        """
        self.close()

    def close(self) -> None:
        """Join the threads and give OpenCV its thread count back (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            cv2.setNumThreads(self._cv2_threads)
