"""What ``timeout=`` means, on every backend, in one place.

A batch that does not arrive within ``timeout`` seconds of being waited for raises
``LoaderTimeoutError``, and the stuck pool is closed. A worker's start-up is not part of a batch's
wait: a process importing torch and unpickling the dataset, a Ray actor waiting for a free CPU,
take seconds on a busy machine. So the first batch of a new pool (on "ray", of each actor) may also
take the start allowance, ``max(timeout, START_S)``; past that, the error says a worker did not start.

Who starts how (``BatchWaits(timeout, starting=...)``): a process pool ("loky", "process",
"dataloader") starts its workers together when it opens, so the wait for its first batch has the
allowance and later ones do not (``starting=1``; loky and process hand a task only to a worker that
has started; the DataLoader deals tasks in turn, so a worker that started more than ``timeout``
after the first would time out its own first batch); a Ray actor answers when it has started, so
"ray" waits for that with ``start_allowance`` and then ``timeout`` for each batch; threads start at
once (``starting=0``) and "sequential" never waits.
"""

from __future__ import annotations

from flirdata.errors import LoaderTimeoutError

__all__ = ["START_S", "BatchWaits", "start_allowance"]

# A worker's start-up allowance, at least: a cold start of a process that imports torch takes a few
# seconds on a quiet machine and several times that under load; an actor may wait for a node.
START_S = 60.0


def start_allowance(timeout: float | None) -> float | None:
    """Seconds a worker may take to start, on top of its first batch's ``timeout`` (None: for ever)."""
    return None if timeout is None else max(timeout, START_S)


class BatchWaits:
    """The consumer's waits for one pool's batches, in order: ``next()`` seconds each (None: for ever).

    The first ``starting`` waits (one per worker the pool starts) also have the start allowance;
    ``arrived()`` counts a batch in, and ``expired(backend)`` is the error of a wait that ran out.
    """

    def __init__(self, timeout: float | None, starting: int) -> None:
        self.timeout = timeout
        self._starting = max(0, starting)

    @property
    def starting(self) -> bool:
        """Whether the next wait may still include a worker's start-up."""
        return self._starting > 0

    def next(self) -> float | None:
        allowance = start_allowance(self.timeout)
        if self.timeout is None or allowance is None:
            return None
        return self.timeout + allowance if self.starting else self.timeout

    def arrived(self) -> None:
        self._starting = max(0, self._starting - 1)

    def expired(self, backend: str) -> LoaderTimeoutError:
        if self.starting:
            return LoaderTimeoutError(backend, self.next() or 0.0, starting=True)
        return LoaderTimeoutError(backend, self.timeout or 0.0)
