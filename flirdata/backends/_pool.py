"""``PoolBackend``: ``flirdata.mapping.bounded_map`` over a process-pool executor with a shared ring.

Shared by the "process" (``concurrent.futures``) and "loky" backends, which differ only
in how their executor is built and shut down. At most ``workers * prefetch`` tasks are in
flight; each holds one ring slot, and the consumer up to ``LENT_BATCHES`` more (the batches it
was handed, whose images are their slots), so memory does not grow with the dataset.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Protocol

import torch

from flirdata.backends._shm import SharedRing, Slot, unpack_batch
from flirdata.backends._spawning import WorkerStart
from flirdata.backends._waits import BatchWaits
from flirdata.backends._worker import run_installed
from flirdata.backends.protocol import WorkerCrashError
from flirdata.mapping import bounded_map

__all__ = ["PoolBackend"]

InFlight = tuple[Future, "Slot | None", int]  # (future, ring slot, samples in the task)
# Batches whose images may stay in their ring slot while the consumer holds them (the batch in
# use and the one the loop variable still holds); beyond that they are copied out.
LENT_BATCHES = 2
# How long a crash report waits for a broken pool's own clean-up (it joins its workers) before reading exits.
_CLEANUP_WAIT_S = 2.0


class Shutdown(Protocol):
    """How a backend stops its executor; ``wait=False`` returns without waiting for the executor's threads."""

    def __call__(self, executor: Executor, wait: bool = True) -> None: ...


class _Resources:
    """What must be released, reachable from a finalizer without the backend itself."""

    def __init__(self, executor: Executor, shutdown: Shutdown) -> None:
        self.executor: Executor | None = executor
        self.shutdown = shutdown
        self.ring: SharedRing | None = None
        self.killed = False  # the workers were killed: do not wait for the executor's threads

    def close(self) -> None:
        executor, self.executor = self.executor, None
        try:
            if executor is not None:
                # Workers first: nobody may write into the ring after. Killed workers write nothing, and
                # waiting for the executor's manager thread could block on a queue one left half-read.
                self.shutdown(executor, wait=not self.killed)
        finally:
            ring, self.ring = self.ring, None
            if ring is not None:
                ring.close()


def _samples(task: Any) -> int:
    """Samples in a loader task ``(epoch, indices)``: what the ring's slots are scaled by; 1 otherwise."""
    if type(task) is tuple and len(task) == 2 and isinstance(task[1], tuple):
        return len(task[1])
    return 1


def _release_when_done(ring: SharedRing, index: int, _: Future) -> None:
    ring.release(index)


def _cancel(future: Future, slot: Slot | None, ring: SharedRing | None, killed: bool = False) -> None:
    """Cancel ``future`` if it has not started; give its slot back once nothing can write into it.

    That is now if the task is cancelled, done or its worker ``killed``; else when it finishes.
    """
    cancelled = future.cancel()
    if slot is None or ring is None:
        return
    if cancelled or future.done() or killed:
        ring.release(slot.index)
    else:
        future.add_done_callback(partial(_release_when_done, ring, slot.index))


class PoolBackend:
    """Ordered map of ``run_installed`` over tasks, ``workers * prefetch`` of them in flight.

    The ring is sized lazily from the first batch (its images travel pickled), so the
    backend needs no knowledge of image sizes; it stays for the pool's lifetime.
    """

    def __init__(
        self,
        name: str,
        executor: Executor,
        shutdown: Shutdown,
        workers: int,
        prefetch: int,
        start: WorkerStart | None = None,
        timeout: float | None = None,
    ) -> None:
        self.name = name
        self.depth = workers * prefetch
        self._start = start or WorkerStart(hide_main=False)
        self.timeout = timeout
        self._waits = BatchWaits(timeout, starting=1)  # the workers start together: see _waits
        self._processes: dict[int, Any] = {}  # pid -> multiprocessing Process, for crash reports
        self._res = _Resources(executor, shutdown)
        self._ring_tried = False
        self._largest_task = 1
        self._finalizer = weakref.finalize(self, self._res.close)

    def imap(self, tasks: Sequence[Any]) -> Iterator[Any]:
        self._largest_task = max(map(_samples, tasks), default=1)
        yield from bounded_map(self._submit, tasks, self.depth, receive=self._receive, abandon=self._abandon)

    @property
    def ring(self) -> SharedRing | None:
        """The shared-memory ring, once the first batch has sized it (None: batches are pickled)."""
        return self._res.ring

    def close(self) -> None:
        """Stop the workers, then unlink the ring (idempotent)."""
        self._finalizer()

    def _executor(self) -> Executor:
        if self._res.executor is None:
            raise RuntimeError(f"flirdata {self.name!r} backend is closed")
        return self._res.executor

    def _submit(self, task: Any) -> InFlight:
        ring = self._res.ring
        slot = ring.acquire() if ring is not None else None
        try:
            executor = self._executor()
            with self._start.starting():  # submit may start a worker process
                future = executor.submit(run_installed, task, slot)
            self._note_processes(executor)
            return future, slot, _samples(task)
        except BaseException as exc:
            if slot is not None and ring is not None:
                ring.release(slot.index)
            if isinstance(exc, BrokenProcessPool):
                raise self._crash_error(exc) from exc
            raise

    def _note_processes(self, executor: Executor) -> None:
        # Private in both executors, but the only way to learn how a dead worker ended.
        with contextlib.suppress(Exception):
            self._processes.update(dict(getattr(executor, "_processes", None) or {}))

    def _kill_workers(self) -> None:
        for pid in self._processes:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # ends a stopped (SIGSTOP) process too

    def _crash_error(self, cause: BaseException | None = None) -> WorkerCrashError:
        """``WorkerCrashError`` naming the workers that died first and how they ended."""
        self._wait_for_pool_cleanup()
        exits: dict[int, int | None] = {}
        for pid, process in self._processes.items():
            with contextlib.suppress(Exception):
                process.join(timeout=_CLEANUP_WAIT_S)
            exits[pid] = getattr(process, "exitcode", None)
        # After a death the pool ends the survivors (SIGTERM; loky: SIGKILL). loky names the
        # exit codes of the workers that died first: keep those; else drop the SIGTERMs.
        named = re.search(r"exit codes of the workers are \{(.*?)\}", str(cause or ""))
        codes = {int(c) for c in re.findall(r"\((-?\d+)\)", named.group(1))} if named else None
        first = {
            pid: code
            for pid, code in exits.items()
            if (code in codes if codes else code not in (None, -signal.SIGTERM))
        }
        return WorkerCrashError(self.name, exits=first or exits)

    def _wait_for_pool_cleanup(self) -> None:
        """Let a broken pool's manager thread finish joining its workers before reading how they ended.

        It joins them as it fails the futures. A fork-server worker's status is one message on a
        pipe: a second reader at the same time (this thread, joining too) finds the pipe empty and
        records 255 over the real status (``multiprocessing.popen_forkserver``).
        """
        manager = getattr(self._res.executor, "_executor_manager_thread", None)  # private in both executors
        if manager is not None and manager is not threading.current_thread():
            with contextlib.suppress(RuntimeError):  # not started
                manager.join(timeout=_CLEANUP_WAIT_S)

    def _receive(self, pending: InFlight) -> Any:
        future, slot, samples = pending
        ring = self._res.ring
        try:
            result = future.result(timeout=self._waits.next())
        except BaseException as exc:
            if isinstance(exc, FutureTimeout):
                self._kill_workers()  # a stuck worker would hold shutdown for ever
                self._res.killed = True
            if slot is not None and ring is not None:
                # A task still running (Ctrl-C while waiting) may yet write into its slot: free it when done.
                _cancel(future, slot, ring, killed=self._res.killed)
            if isinstance(exc, BrokenProcessPool):  # loky's TerminatedWorkerError is a subclass
                raise self._crash_error(exc) from exc
            if isinstance(exc, FutureTimeout):
                raise self._waits.expired(self.name) from exc
            raise
        self._waits.arrived()
        batch = unpack_batch(result, ring, slot)  # the ring takes the slot back: lent as the images, or freed
        if not self._ring_tried:
            self._make_ring(batch, samples)
        return batch

    def _make_ring(self, batch: Any, samples: int) -> None:
        """Size the slots from the first batch, scaled up if it was a short one."""
        self._ring_tried = True
        images = batch[0] if type(batch) is tuple and batch else None
        if isinstance(images, torch.Tensor) and images.numel() and samples:
            slot_bytes = -(-images.nbytes * self._largest_task // samples)
            self._res.ring = SharedRing.create(slot_bytes, self.depth + LENT_BATCHES, lend=LENT_BATCHES)

    def _abandon(self, window: deque[InFlight]) -> None:
        """Cancel what has not started; slots of running tasks are freed when they finish."""
        ring = self._res.ring
        for future, slot, _ in window:
            _cancel(future, slot, ring)
