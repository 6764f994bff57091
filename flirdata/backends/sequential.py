"""The "sequential" backend: every batch fetched in the calling thread, nothing ahead.

The baseline of every comparison, and the explicit path of ``workers <= 1`` whatever
backend was asked for (as joblib does with ``n_jobs=1``): a pool of one worker would only
add transport to the same amount of work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from flirdata.backends._worker import tune_malloc
from flirdata.backends.protocol import BackendKind, TaskFunction

__all__ = ["KIND", "SequentialBackend"]

KIND = BackendKind(parallel=False, uses_threads=True)  # the calling thread, one batch at a time


class SequentialBackend:
    """``map(fetcher, tasks)``, lazily; ``workers``, ``prefetch`` and ``timeout`` are unused.

    Nothing waits here (the calling thread does the work), so there is nothing to time out.
    """

    name = "sequential"

    def __init__(
        self, fetcher: TaskFunction, workers: int = 1, prefetch: int = 1, timeout: float | None = None
    ) -> None:
        self._fetcher = fetcher
        tune_malloc()  # the augmentation runs in this process

    def imap(self, tasks: Sequence[Any]) -> Iterator[Any]:
        for task in tasks:
            yield self._fetcher(task)

    def close(self) -> None:
        """Nothing to release."""
