"""The one ordered, bounded map (``flirdata.mapping``) and backends running any task function."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from support import backend_params

from flirdata.loader import open_backend
from flirdata.mapping import bounded_map, executor_map


class _Recorder:
    """``submit`` that returns finished futures and records what was submitted and abandoned."""

    def __init__(self) -> None:
        self.submitted: list[int] = []
        self.abandoned: list[int] = []

    def submit(self, task: int) -> Future:
        self.submitted.append(task)
        future: Future = Future()
        future.set_result(task * 10)
        return future

    def abandon(self, window: object) -> None:
        self.abandoned = [f.result() // 10 for f in window]  # type: ignore[attr-defined]


def test_results_come_in_task_order_with_depth_in_flight() -> None:
    rec = _Recorder()
    results = bounded_map(rec.submit, range(10), 3, abandon=rec.abandon)
    assert rec.submitted == []  # lazy: nothing starts before the first result is asked for
    assert next(results) == 0
    assert rec.submitted == [0, 1, 2, 3]  # three ahead, refilled when the first was taken
    assert next(results) == 10 and rec.submitted == [0, 1, 2, 3, 4]
    assert list(results) == [k * 10 for k in range(2, 10)] and rec.abandoned == []


def test_closing_early_hands_the_pending_tasks_to_abandon() -> None:
    rec = _Recorder()
    results = bounded_map(rec.submit, iter(range(100)), 4, abandon=rec.abandon)
    assert [next(results), next(results)] == [0, 10]
    results.close()
    assert rec.abandoned == [2, 3, 4, 5] and len(rec.submitted) == 6


def test_an_error_is_raised_in_order_and_the_rest_abandoned() -> None:
    rec = _Recorder()

    def receive(future: Future) -> int:
        if future.result() == 20:
            raise KeyError("task 2")
        return future.result()

    results = bounded_map(rec.submit, range(10), 2, receive=receive, abandon=rec.abandon)
    assert [next(results), next(results)] == [0, 10]
    with pytest.raises(KeyError, match="task 2"):
        next(results)
    assert rec.abandoned == [3]


def test_default_abandon_cancels_queued_futures() -> None:
    started, gate = threading.Event(), threading.Event()

    def block(_: int) -> None:
        started.set()
        gate.wait(30)

    with ThreadPoolExecutor(1) as pool:
        futures: list[Future] = []

        def submit(task: int) -> Future:
            futures.append(pool.submit(block if task == 1 else int, task))
            return futures[-1]

        results = bounded_map(submit, range(5), 3)
        assert next(results) == 0
        assert started.wait(30)  # task 1 holds the only thread; 2 and 3 wait in the queue
        results.close()
        gate.set()
        assert [f.cancelled() for f in futures] == [False, False, True, True]


def test_executor_map_inline_and_pooled_agree_and_shut_down() -> None:
    made: list[ThreadPoolExecutor] = []

    def make() -> ThreadPoolExecutor:
        made.append(ThreadPoolExecutor(2, thread_name_prefix="flirdata-test-map"))
        return made[-1]

    assert list(executor_map(None, str, range(7), 2)) == [str(k) for k in range(7)]
    assert list(executor_map(make, str, range(7), 2)) == [str(k) for k in range(7)]
    results = executor_map(make, str, range(1000), 4)
    assert next(results) == "0"
    results.close()
    assert len(made) == 2 and all(pool._shutdown for pool in made)
    assert not [t for t in threading.enumerate() if t.name.startswith("flirdata-test-map")]


def square(task: int) -> int:
    return task * task


@pytest.mark.parametrize("backend", backend_params(["sequential", "threads", "process", "loky", "dataloader"]))
def test_every_backend_runs_any_task_function(backend: str) -> None:
    runner = open_backend(backend, square, workers=2, prefetch=1)
    try:
        assert list(runner.imap(list(range(9)))) == [k * k for k in range(9)]
    finally:
        runner.close()


def test_open_backend_names_the_valid_backends() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'; expected one of \['dataloader', 'loky'"):
        open_backend("gpu", square, workers=2)
