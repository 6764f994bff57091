"""The one protocol every backend implements: an ordered, bounded map of a task function over tasks.

The task function is any picklable callable (a ``TaskFunction``). The loader's is the
``Fetcher``: its task is ``(epoch, indices)`` and its result ``collate([dataset[i] for i in
indices])`` with the dataset set to ``epoch``; export's writes a batch of files. Backends
differ only in *who* runs the function (the calling thread, a thread pool, worker
processes), never in *what* it returns, so the same tasks give the same batches, byte for
byte, on every backend and worker count.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flirdata.errors import ShmCapacityError, WorkerError, add_note

__all__ = [
    "Task",
    "TaskFunction",
    "Fetcher",
    "Backend",
    "BackendFactory",
    "BackendKind",
    "WorkerCrashError",
    "check_semaphores",
    "describe_exit",
    "shm_start_error",
    "item_getter",
    "sync_epoch",
]

# (epoch, sample indices of one batch): the epoch travels with every task, so a persistent
# worker never serves a stale epoch, whichever epoch its previous task belonged to.
Task = tuple[int, tuple[int, ...]]
# What a backend runs in its workers: one task in, one result out; picklable for process backends.
TaskFunction = Callable[[Any], Any]


def sync_epoch(dataset: Any, epoch: int) -> None:
    """Move ``dataset`` to ``epoch`` if it has epochs and is elsewhere (cheap when already there)."""
    set_epoch = getattr(dataset, "set_epoch", None)
    if set_epoch is not None and getattr(dataset, "epoch", None) != epoch:
        set_epoch(epoch)


def item_getter(dataset: Any, epoch: int) -> Callable[[int], Any]:
    """``i -> sample i as augmented in epoch``.

    A dataset with ``sample(i, epoch)`` and ``set_epoch`` (``FlirDetection`` and its views) is
    asked for the task's epoch directly, so nothing shared is mutated: threads serving two
    epochs at once, and workers whose dataset shares its epoch with the main process, stay
    right. Other datasets with ``set_epoch`` are moved to the epoch first.
    """
    sample = getattr(dataset, "sample", None)
    if callable(sample) and hasattr(dataset, "set_epoch"):
        return lambda i: sample(i, epoch)
    sync_epoch(dataset, epoch)
    return dataset.__getitem__


def _file_of(dataset: Any, i: int) -> str:
    """``", file PATH"`` for a dataset that names its samples' files (``image_path``), else ``""``."""
    image_path = getattr(dataset, "image_path", None)
    if not callable(image_path):
        return ""
    try:
        return f", file {image_path(i)}"
    except Exception:  # the note must never hide the error it annotates
        return ""


@dataclass(frozen=True)
class Fetcher:
    """Turns one task into one batch; picklable, so it is what reaches each worker (once).

    Errors keep their type and message and gain a note naming the sample, epoch and file, since a
    traceback from a worker otherwise cannot tell which image was bad.
    """

    dataset: Any
    collate_fn: Callable[[list[Any]], Any]

    def samples(self, task: Task) -> tuple[int, ...]:
        """The dataset indices ``task`` reads (what the ``ray`` backend's ``ship_images`` reads ahead)."""
        return tuple(task[1])

    def __call__(self, task: Task) -> Any:
        epoch, indices = task
        get = item_getter(self.dataset, epoch)
        samples = []
        for i in indices:
            try:
                samples.append(get(i))
            except Exception as exc:
                add_note(exc, f"flirdata: while loading sample {i} (epoch {epoch}{_file_of(self.dataset, i)})")
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

    def imap(self, tasks: Sequence[Any]) -> Iterator[Any]: ...

    def close(self) -> None: ...


def _never(**options: Any) -> bool:
    return False


@dataclass(frozen=True)
class BackendKind:
    """What a backend is, declared next to it (its module's ``KIND``), as joblib's backends declare
    ``uses_threads``: callers ask it, never test the backend's name.

    Attributes:
        parallel: its workers run batches side by side; False: the calling thread does each one
            in turn (the "sequential" path, which nothing can oversubscribe).
        uses_threads: the work runs in threads of this process (the calling thread counts): one
            dataset, one GIL, nothing pickled; False: in processes, each with its own copy.
        runs_elsewhere: ``(**backend_options) -> bool``, whether its workers may run on other
            machines, whose cores are not this process's to count.
        extra: the optional package it imports when it opens (the extra of the same name).
        needs_semaphores: its pool is built on multiprocessing's locks (POSIX semaphores, made in
            /dev/shm; a thread pool's too): checked before it starts (``check_semaphores``).
    """

    parallel: bool
    uses_threads: bool
    runs_elsewhere: Callable[..., bool] = _never
    extra: str | None = None
    needs_semaphores: bool = False


# factory(task function, workers, prefetch, timeout) -> Backend; prefetch = tasks in flight per
# worker; timeout = seconds to wait for one batch (None: for ever), its meaning in backends._waits.
BackendFactory = Callable[[TaskFunction, int, int, "float | None"], Backend]


def check_semaphores(backend: str) -> None:
    """``ShmCapacityError`` naming ``backend`` if this process cannot make a POSIX semaphore.

    Every pool of the backends that declare ``needs_semaphores`` makes several as it starts
    (multiprocessing's locks; a thread pool's too); with /dev/shm full each fails deep inside it
    (``OSError: [Errno 28]``, joblib's ``FallbackToBackend``) and leaves half a pool to clean up.
    """
    try:
        from _multiprocessing import SemLock
    except ImportError:  # no semaphores on this platform: the pool itself will say so
        return
    name = f"/flirdata-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        SemLock(1, 1, 1, name, True)  # kind 1 (a semaphore), unlinked at once: its name never stays
    except FileExistsError:  # another process's, by chance: there is room to make it
        return
    except OSError as exc:
        raise shm_start_error(backend, exc) from exc


def shm_start_error(backend: str, reason: BaseException | str) -> ShmCapacityError:
    """The error of a backend that could not make its pool's semaphores, for ``reason``."""
    return ShmCapacityError(
        f"flirdata {backend!r} backend: cannot start: its pool needs semaphores in /dev/shm ({reason}); "
        "free space in /dev/shm (in docker: a larger --shm-size), or use the 'sequential' backend, which needs none."
    )


def describe_exit(code: int | None) -> str:
    """What a worker's exit code says about its death, in words a user can act on."""
    if code is None:
        return "died"
    if code >= 0:
        return f"exited with status {code} (its error, if any, is printed above)"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    cause = {
        "SIGKILL": "the OOM killer or `kill -9`; look for 'Killed process' in `dmesg`, or lower workers, "
        "prefetch or batch_size",
        "SIGBUS": "usually /dev/shm is full; free it or enlarge it (`df -h /dev/shm`)",
        "SIGSEGV": "a crash in native code",
    }.get(name, "a signal")
    return f"was killed by {name} ({cause})"


class WorkerCrashError(WorkerError):
    """A worker process died (a signal, the OOM killer, a segfault, an exit) instead of returning.

    ``exits`` maps the pid of each dead worker to its exit code (negative: the signal) or
    None when unknown. The original error is kept as ``__cause__``. The pool is closed;
    iterating the loader again starts a new one.
    """

    def __init__(
        self,
        backend: str,
        pids: Iterable[int] = (),
        exits: Mapping[int, int | None] | None = None,
        where: str = "",
    ) -> None:
        exits = dict(exits or {})
        pids = tuple(sorted({*pids, *exits}))
        if exits:
            what = "; ".join(f"worker pid {pid} {describe_exit(code)}" for pid, code in sorted(exits.items()))
        else:
            who = f" (pid {', '.join(map(str, pids))})" if pids else ""
            what = f"a worker process{who} died unexpectedly"
        where_text = f" {where}" if where else ""  # e.g. the Ray cluster the workers ran on
        super().__init__(
            f"flirdata {backend!r} backend: {what}{where_text}. The pool was closed; iterating again starts a new one."
        )
        self.backend = backend
        self.pids = pids
        self.exits = exits
        self.where = where

    def __reduce__(self) -> tuple[type, tuple[str, tuple[int, ...], dict[int, int | None], str]]:
        return type(self), (self.backend, self.pids, self.exits, self.where)
