"""The "dataloader" backend: torch's ``DataLoader`` workers running one task function.

The function is the loader's ``Fetcher`` or any other picklable callable (export's writer).

The DataLoader gets tasks, not indices: its sampler yields ``(epoch, indices)`` and its
dataset turns one task into one batch, so the batching, shuffling and sharding stay the
loader's and the batches are the same as on every other backend. Workers persist across
epochs (``persistent_workers``); torch already moves batch tensors through shared memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from torch.utils.data import DataLoader, Dataset

from flirdata.backends._spawning import plan_worker_start
from flirdata.backends._waits import BatchWaits
from flirdata.backends._wire import RemoteFailure, Shipment
from flirdata.backends._worker import forkserver_context, setup_worker
from flirdata.backends.protocol import BackendKind, TaskFunction, WorkerCrashError

_WATCHDOG_GRACE_S = 2.0  # beyond the timeout, before the watchdog kills a stuck transfer

__all__ = ["KIND", "DataLoaderBackend"]

KIND = BackendKind(parallel=True, uses_threads=False, needs_semaphores=True)


class _TaskDataset(Dataset):
    """``dataset[task]`` is the task's batch as a ``Shipment``, or a ``RemoteFailure``."""

    def __init__(self, fetcher: TaskFunction) -> None:
        self.fetcher = fetcher

    def __getitem__(self, task: Any) -> Any:  # type: ignore[override]
        try:
            batch = self.fetcher(task)
        except Exception as exc:
            return RemoteFailure.capture(exc)
        return Shipment.pack(batch)


class _TaskSource:
    """The DataLoader's sampler: the current epoch's tasks (read in the main process)."""

    def __init__(self) -> None:
        self.tasks: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


def _identity(batch: Any) -> Any:
    return batch


@contextlib.contextmanager
def _more_workers_than_cores_is_fine() -> Iterator[None]:
    # The worker count was asked for explicitly; torch would warn at creation and every epoch.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


class DataLoaderBackend:
    """``torch.utils.data.DataLoader`` with ``workers`` persistent fork-server workers."""

    name = "dataloader"

    def __init__(self, fetcher: TaskFunction, workers: int, prefetch: int, timeout: float | None = None) -> None:
        self._source = _TaskSource()
        self._expired = False  # the watchdog killed the workers of a wait that outlasted the timeout
        self._waits = BatchWaits(timeout, starting=1)  # the workers start together: see _waits
        self._start = plan_worker_start(fetcher, self.name)  # before any process starts
        with _more_workers_than_cores_is_fine():
            self._loader: DataLoader | None = DataLoader(
                _TaskDataset(fetcher),
                batch_size=None,
                sampler=self._source,
                collate_fn=_identity,
                num_workers=workers,
                prefetch_factor=prefetch,
                persistent_workers=True,
                multiprocessing_context=forkserver_context(),
                worker_init_fn=partial(setup_worker, owner=os.getpid()),
                timeout=timeout or 0,
            )

    def imap(self, tasks: Sequence[Any]) -> Iterator[Any]:
        if self._loader is None:
            raise RuntimeError("flirdata 'dataloader' backend is closed")
        self._source.tasks = list(tasks)
        with self._worker_failures():
            with _more_workers_than_cores_is_fine(), self._start.starting():
                batches = iter(self._loader)  # starts the workers on the first epoch
        while True:
            wait = self._waits.next()
            # torch's own wait for a batch's message: set per wait (its iterator copied timeout= once).
            batches._timeout = wait or 0  # type: ignore[attr-defined]
            with self._worker_failures(), self._watchdog(wait):
                try:
                    batch = next(batches)
                except StopIteration:
                    return
            self._waits.arrived()
            if isinstance(batch, RemoteFailure):
                batch.reraise()
            yield batch.unpack() if isinstance(batch, Shipment) else batch

    @contextlib.contextmanager
    def _watchdog(self, timeout: float | None) -> Iterator[None]:
        """Kill the workers if a wait outlasts ``timeout`` where torch's own timeout cannot see.

        torch times out the wait for a batch's message, not the descriptor transfer that
        follows it: a worker stopped between the two holds the consumer for ever.
        """
        if not timeout:
            yield
            return
        timer = threading.Timer(timeout + _WATCHDOG_GRACE_S, self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _expire(self) -> None:
        self._expired = True
        self._kill_workers()

    @contextlib.contextmanager
    def _worker_failures(self) -> Iterator[None]:
        """Turn torch's errors about dead or silent workers into flirdata's."""
        try:
            yield
        except (RuntimeError, ConnectionError, EOFError, OSError) as exc:
            if self._expired:
                raise self._waits.expired(self.name) from exc
            self._map_failure(exc)
            raise

    def _map_failure(self, exc: BaseException) -> None:
        """Raise flirdata's error for ``exc``, or return if it is not about the workers."""
        if isinstance(exc, RuntimeError):
            if self._waits.timeout and "timed out" in str(exc):
                self._kill_workers()  # a stuck worker would hold the shutdown for ever
                raise self._waits.expired(self.name) from exc
        # A worker that dies while sending a batch breaks the descriptor transfer
        # (ConnectionResetError, EOFError) before torch's own check notices it.
        crash = self._crash_error()
        if crash is not None:
            raise crash from exc

    def _workers(self) -> list[Any]:
        iterator = None if self._loader is None else getattr(self._loader, "_iterator", None)
        return list(getattr(iterator, "_workers", None) or ())  # private, as torch names it

    def _kill_workers(self) -> None:
        for worker in self._workers():
            with contextlib.suppress(OSError, TypeError):
                os.kill(worker.pid, signal.SIGKILL)  # ends a stopped (SIGSTOP) process too

    def _crash_error(self) -> WorkerCrashError | None:
        """``WorkerCrashError`` for the workers that have died, or None if all are alive."""
        workers = self._workers()
        deadline = time.monotonic() + 2.0
        while True:  # a worker that broke the connection is dead or about to be
            exits = {w.pid: w.exitcode for w in workers if w.exitcode is not None}
            if exits or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return WorkerCrashError(self.name, exits=exits) if exits else None

    def close(self) -> None:
        """Stop the persistent workers now rather than whenever the iterator is collected."""
        loader, self._loader = self._loader, None
        iterator = None if loader is None else getattr(loader, "_iterator", None)
        if iterator is not None:
            # Private, but the only deterministic way: torch shuts workers down in __del__.
            iterator._shutdown_workers()
