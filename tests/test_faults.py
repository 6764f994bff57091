"""Faults on every backend: worker exceptions, killed workers, early exits, cleanup.

Process trees are compared before and after with psutil. A module fixture starts the
process-wide helpers first (the fork server, the resource trackers): they stay for the
interpreter's life by design, and must not count as leaks. The "ray" cases run on the session's
Ray instance, whose raylet starts and ends its own workers: those are not counted either.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from support import backend_params, our_children, our_segments, use_shared_ray_for
from tiers import measured_startup_s, process_startup_s
from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL

from flirdata.backends import BACKENDS, WorkerCrashError
from flirdata.loader import make_loader

PROCESS_BACKENDS = ("dataloader", "loky", "process")
PARALLEL = ("dataloader", "loky", "process", "ray", "threads")


class Samples:
    """Deterministic small samples; ``bad`` raises, ``delay`` slows every sample down."""

    def __init__(
        self, size: int = 24, bad: int | None = None, delay: float = 0.0, error: Callable[[str], Exception] = ValueError
    ) -> None:
        self.size, self.bad, self.delay, self.error = size, bad, delay, error
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if i == self.bad:
            raise self.error(f"bad sample {i} in epoch {self.epoch}")
        time.sleep(self.delay)
        image = np.random.default_rng([self.epoch, i]).integers(0, 256, (1, 8, 8), dtype=np.uint8)
        return torch.from_numpy(image), {"image_id": i}


class StubbornError(Exception):
    """Cannot be unpickled: its ``__init__`` does not take its ``args`` back."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def stubborn(message: str) -> StubbornError:
    return StubbornError(message, code=3)


def children() -> set[int]:
    return {p.pid for p in our_children()}


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
    return out


@contextlib.contextmanager
def leaves_nothing_behind() -> Iterator[None]:
    """Assert the block leaves no new process, thread or shared-memory segment."""
    procs, threads, segments = children(), set(threading.enumerate()), our_segments()
    yield
    # Exited workers (and pool threads) may take a moment to end: ten process start-ups, measured
    # where a slow test has measured one (a quick test has only threads to end: 10 s).
    deadline = time.monotonic() + 10 * (measured_startup_s() or 1.0)
    while (alive(children() - procs) or set(threading.enumerate()) - threads) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(children() - procs), "worker processes left behind"
    assert our_segments() <= segments, "shared memory left in /dev/shm"
    assert not set(threading.enumerate()) - threads, f"threads left behind: {set(threading.enumerate()) - threads}"


@pytest.fixture(autouse=True)
def _helpers_before_slow_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slow"):  # the quick tier starts no process
        request.getfixturevalue("process_wide_helpers")


@pytest.fixture(scope="module")
def process_wide_helpers() -> None:
    for backend in PROCESS_BACKENDS:
        with make_loader(Samples(4), backend=backend, workers=2, batch_size=2) as loader:
            list(loader)


@pytest.mark.parametrize("backend", backend_params(["sequential", *PARALLEL]))
def test_exception_keeps_type_message_and_sample(backend: str, request: pytest.FixtureRequest) -> None:
    use_shared_ray_for(backend, request)
    workers = 1 if backend == "sequential" else 2
    with make_loader(Samples(bad=13), backend=backend, workers=workers, batch_size=4) as loader:
        loader.set_epoch(2)
        with pytest.raises(ValueError, match="bad sample 13 in epoch 2") as caught:
            list(loader)
        assert str(caught.value) == "bad sample 13 in epoch 2"  # the message, unchanged
        assert "flirdata: while loading sample 13 (epoch 2)" in caught.value.__notes__
        loader.set_epoch(3)
        with pytest.raises(ValueError, match="bad sample 13 in epoch 3"):  # the pool still works
            list(loader)


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_unpicklable_exception_still_names_type_message_and_sample(backend: str) -> None:
    with make_loader(Samples(bad=5, error=stubborn), backend=backend, workers=2, batch_size=4) as loader:
        with pytest.raises(RuntimeError, match="StubbornError: bad sample 5 in epoch 0") as caught:
            list(loader)
    assert "flirdata: while loading sample 5 (epoch 0)" in caught.value.__notes__


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_killed_worker_raises_instead_of_hanging(backend: str) -> None:
    with leaves_nothing_behind():
        before = children()
        loader = make_loader(Samples(200, delay=0.01), backend=backend, workers=2, batch_size=4)
        with loader:
            batches = iter(loader)
            start = time.monotonic()
            next(batches)
            startup = time.monotonic() - start  # the workers' start, measured
            workers = alive(children() - before)
            assert len(workers) == 2
            os.kill(min(workers), signal.SIGKILL)
            start = time.monotonic()
            killed = rf"'{backend}' backend: worker pid \d+ was killed by SIGKILL"
            with pytest.raises(WorkerCrashError, match=killed) as caught:
                for _ in batches:
                    pass
            # A crash is seen within torch's status check (5 s) and the pool's clean-up, not after a hang.
            assert time.monotonic() - start < MP_STATUS_CHECK_INTERVAL + 2 * startup + process_startup_s()
            assert caught.value.__cause__ is not None
            assert loader.backend is None  # the broken pool is gone ...
            assert len(list(loader)) == len(loader)  # ... and the next epoch gets a new one


@pytest.mark.parametrize("backend", backend_params(PARALLEL))
def test_break_then_next_epoch_then_close(backend: str, request: pytest.FixtureRequest) -> None:
    use_shared_ray_for(backend, request)
    with leaves_nothing_behind():
        loader = make_loader(Samples(40, delay=0.005), backend=backend, workers=2, batch_size=3)
        expected = [b[0] for b in make_loader(Samples(40), batch_size=3)]
        first = next(iter(loader))  # the iterator is dropped at once, mid-epoch
        assert torch.equal(first[0], expected[0])
        # The abandoned epoch freed its ring slots and does not leak into the next one.
        assert all(torch.equal(b[0], e) for b, e in zip(loader, expected, strict=True))
        loader.close()
        loader.close()  # idempotent


@pytest.mark.parametrize("backend", backend_params(PARALLEL))
def test_keyboard_interrupt_in_the_loop(backend: str, request: pytest.FixtureRequest) -> None:
    use_shared_ray_for(backend, request)
    with leaves_nothing_behind(), pytest.raises(KeyboardInterrupt):
        with make_loader(Samples(40, delay=0.005), backend=backend, workers=2, batch_size=3) as loader:
            for _ in loader:
                raise KeyboardInterrupt


@pytest.mark.parametrize("backend", backend_params(PARALLEL))
def test_garbage_collection_closes_everything(backend: str, request: pytest.FixtureRequest) -> None:
    use_shared_ray_for(backend, request)
    with leaves_nothing_behind():
        loader = make_loader(Samples(40, delay=0.005), backend=backend, workers=2, batch_size=3)
        batches = iter(loader)
        next(batches)
        del loader, batches
        gc.collect()


def test_every_backend_is_covered() -> None:
    assert set(PARALLEL) | {"sequential"} == set(BACKENDS)
