"""The one ordered, bounded map: results in task order, at most ``depth`` tasks in flight.

Every parallel path of flirdata is this window: the loader's backends (threads, process
pools), ``export`` (through a backend), ``check`` (a thread pool) and ``synth`` (a process
pool). It submits the first ``depth`` tasks, then, each time the consumer takes a result,
submits one more, so memory is bounded by ``depth`` however slow the consumer is (a pool's
own ``map`` submits everything at once, or refills when a task *finishes*, and finished
results then pile up behind a slow consumer). Closing the generator hands the pending
handles to ``abandon`` (by default: cancel what has not started).

This module imports nothing heavy (no torch), so ``flirdata synth`` can use it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any, TypeVar

__all__ = ["bounded_map", "cancel_pending", "executor_map", "future_result"]

T = TypeVar("T")
H = TypeVar("H")
R = TypeVar("R")

_END = object()


def future_result(handle: Future) -> Any:
    """The default ``receive``: wait for a future's result (its error re-raised here)."""
    return handle.result()


def cancel_pending(handles: Iterable[Future]) -> None:
    """The default ``abandon``: cancel the futures that have not started (running ones finish)."""
    for handle in handles:
        handle.cancel()


def bounded_map(
    submit: Callable[[T], H],
    tasks: Iterable[T],
    depth: int,
    *,
    receive: Callable[[H], R] = future_result,
    abandon: Callable[[deque[H]], None] = cancel_pending,
) -> Iterator[R]:
    """``receive(submit(task))`` for each task, in task order, with at most ``depth`` submitted ahead.

    Args:
        submit: starts one task and returns a handle (a future or anything ``receive`` takes).
        tasks: any iterable, consumed lazily.
        depth: tasks in flight at most (values below 1 count as 1).
        receive: waits for one handle and returns its result (or raises its error).
        abandon: called once with the handles still pending when the generator ends, fails
            or is closed early.
    """
    todo = iter(tasks)
    window: deque[H] = deque()
    try:
        for task in itertools.islice(todo, max(1, depth)):
            window.append(submit(task))
        while window:
            result = receive(window.popleft())
            task = next(todo, _END)
            if task is not _END:  # refill before yielding: workers run while the consumer does
                window.append(submit(task))  # type: ignore[arg-type]
            yield result
    finally:
        abandon(window)


def executor_map(
    make_executor: Callable[[], Executor] | None, fn: Callable[[T], R], tasks: Iterable[T], depth: int
) -> Iterator[R]:
    """``map(fn, tasks)`` in order on an executor made on first use, shut down when the map ends.

    ``make_executor=None`` runs ``fn`` inline in the calling thread (the explicit serial path,
    no pool to start). Closing the generator early cancels the queued tasks and waits for the
    running ones, so nothing keeps working in the background.
    """
    if make_executor is None:
        yield from map(fn, tasks)
        return
    executor = make_executor()
    try:
        yield from bounded_map(partial(executor.submit, fn), tasks, depth)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
