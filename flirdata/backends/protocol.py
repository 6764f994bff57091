"""The one protocol every backend implements: an ordered, bounded map of ``Fetcher`` over tasks.

A task is ``(epoch, indices)``; its batch is ``collate([dataset[i] for i in indices])`` with
the dataset set to ``epoch``. Backends differ only in *who* runs the fetch (the calling
thread, a thread pool, worker processes), never in *what* it returns, so the same tasks
give the same batches, byte for byte, on every backend and worker count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Task", "Fetcher", "Backend", "BackendFactory", "WorkerCrashError", "add_note", "sync_epoch"]

# (epoch, sample indices of one batch): the epoch travels with every task, so a persistent
# worker never serves a stale epoch, whichever epoch its previous task belonged to.
Task = tuple[int, tuple[int, ...]]


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; Python 3.10 lacks it, so set ``__notes__`` as 3.11 would."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]


def sync_epoch(dataset: Any, epoch: int) -> None:
    """Move ``dataset`` to ``epoch`` if it has epochs and is elsewhere (cheap when already there)."""
    set_epoch = getattr(dataset, "set_epoch", None)
    if set_epoch is not None and getattr(dataset, "epoch", None) != epoch:
        set_epoch(epoch)


@dataclass(frozen=True)
class Fetcher:
    """Turns one task into one batch; picklable, so it is what reaches each worker (once).

    Errors keep their type and message and gain a note naming the sample and epoch, since a
    traceback from a worker otherwise cannot tell which image was bad.
    """

    dataset: Any
    collate_fn: Callable[[list[Any]], Any]

    def __call__(self, task: Task) -> Any:
        epoch, indices = task
        sync_epoch(self.dataset, epoch)
        samples = []
        for i in indices:
            try:
                samples.append(self.dataset[i])
            except Exception as exc:
                add_note(exc, f"flirdata: while loading sample {i} (epoch {epoch})")
                raise
        try:
            return self.collate_fn(samples)
        except Exception as exc:
            add_note(exc, f"flirdata: while collating samples {list(indices)} (epoch {epoch})")
            raise


class Backend(Protocol):
    """What the loader needs from a backend: a lazy ordered map and a way to stop.

    ``imap`` returns a generator yielding one batch per task, in task order, with at most a
    bounded number of batches computed ahead; closing it cancels what is pending. The pool
    (if any) outlives one ``imap`` call, so workers persist across epochs until ``close``.
    """

    name: str

    def imap(self, tasks: Sequence[Task]) -> Iterator[Any]: ...

    def close(self) -> None: ...


# factory(fetcher, workers, prefetch) -> Backend; prefetch = batches in flight per worker.
BackendFactory = Callable[[Fetcher, int, int], Backend]


class WorkerCrashError(RuntimeError):
    """A worker process died (SIGKILL, the OOM killer, a segfault) instead of returning.

    The original executor error is kept as ``__cause__``. The pool is closed; iterating
    the loader again starts a new one.
    """

    def __init__(self, backend: str, pids: Iterable[int] = ()) -> None:
        pids = tuple(sorted(pids))
        who = f" (pid {', '.join(map(str, pids))})" if pids else ""
        super().__init__(
            f"flirdata {backend!r} backend: a worker process{who} died unexpectedly, e.g. killed "
            "by the OOM killer or a signal; look for 'Killed process' in `dmesg`, or lower "
            "workers, prefetch or batch_size. The pool was closed; iterating again starts a new one."
        )
        self.backend = backend
        self.pids = pids

    def __reduce__(self) -> tuple[type, tuple[str, tuple[int, ...]]]:
        return type(self), (self.backend, self.pids)
