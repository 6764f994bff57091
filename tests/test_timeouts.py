"""One meaning of ``timeout=`` on every backend (``flirdata.backends._waits``).

A batch that does not arrive within ``timeout`` seconds of being waited for raises
``LoaderTimeoutError``; a worker's start-up is not part of that wait (the first batch of a new pool
also has the start allowance). The "threads" bound is ``test_misuse``'s stuck-thread test, the
"ray" ones ``test_ray``'s (a stopped actor, a slow start, a start past its allowance).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil
import pytest
import torch

import flirdata.backends._waits as waits
from flirdata import make_loader
from flirdata.backends.dataloader import _WATCHDOG_GRACE_S
from flirdata.errors import LoaderTimeoutError

PROCESS_BACKENDS = ("dataloader", "loky", "process")


class Tiny:
    """``size`` samples of a 2x2 image: batches cost nothing, so only a worker's state delays one."""

    def __init__(
        self, size: int = 24, start_s: float = 0.0, slow_index: int | None = None, sample_s: float = 0.0
    ) -> None:
        self.size = size
        self.start_s = start_s  # seconds a worker takes to unpickle it: its start-up
        self.slow_index = slow_index  # a sample that takes 0.3 s (read in the calling thread)
        self.sample_s = sample_s  # seconds every sample takes
        self.owner = os.getpid()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if i == self.slow_index:
            time.sleep(0.3)
        time.sleep(self.sample_s)
        return torch.full((1, 2, 2), i % 256, dtype=torch.uint8), {"image_id": i, "pid": os.getpid()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if os.getpid() != self.owner:
            time.sleep(self.start_s)


def test_the_first_wait_of_each_new_worker_has_the_start_allowance() -> None:
    batch_waits = waits.BatchWaits(2.0, starting=2)
    assert [batch_waits.next(), batch_waits.starting] == [2.0 + waits.START_S, True]
    batch_waits.arrived()
    late = batch_waits.expired("loky")
    assert late.starting and f"a worker did not start within {2 + waits.START_S:g} s" in str(late)
    batch_waits.arrived()
    assert [batch_waits.next(), batch_waits.starting] == [2.0, False]
    assert "no batch arrived within timeout=2 s" in str(batch_waits.expired("loky"))
    assert waits.start_allowance(90.0) == 90.0 and waits.start_allowance(None) is None
    assert waits.BatchWaits(None, starting=3).next() is None


def test_sequential_never_waits() -> None:
    """The calling thread does the work: a sample slower than ``timeout`` is not a time-out."""
    loader = make_loader(Tiny(size=4, slow_index=1), backend="loky", workers=1, batch_size=1, timeout=0.05)
    assert len(list(loader)) == 4


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_worker_s_start_up_is_not_part_of_a_batch_s_wait(backend: str) -> None:
    # Each worker takes 4 s to start (to unpickle the dataset), twice the timeout: before, the first
    # batch's wait included it and timed out.
    with make_loader(Tiny(size=12, start_s=4.0), backend=backend, workers=2, batch_size=2, timeout=2) as loader:
        assert [batch[1][0]["image_id"] for batch in loader] == list(range(0, 12, 2))


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_stopped_pool_times_out_within_timeout_and_a_bound(backend: str) -> None:
    """Once the workers have started, the error arrives after ``timeout`` and before ``timeout`` + 2 s (the
    dataloader's watchdog grace) + twice the pool's start-up measured here: killing the workers is less
    work than starting them."""
    start = time.monotonic()
    with make_loader(Tiny(size=400), backend=backend, workers=2, batch_size=1, prefetch=1) as loader:
        next(iter(loader))
        startup = time.monotonic() - start
    timeout = 2.0 + startup  # far above a batch of Tiny's, whatever the load
    # Each sample takes a twentieth of a start-up: one worker alone cannot finish the epoch (20
    # start-ups) before the other has started, however busy the machine.
    slow = Tiny(size=400, sample_s=startup / 20)
    with make_loader(slow, backend=backend, workers=2, batch_size=1, prefetch=1, timeout=timeout) as loader:
        batches = iter(loader)
        pids: set[int] = set()
        for batch in batches:  # a batch from each worker: both have started
            pids.add(batch[1][0]["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "one worker served the whole epoch"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(LoaderTimeoutError, match=rf"'{backend}' backend: no batch arrived within timeout="):
            list(batches)
        took = time.monotonic() - start
    assert timeout <= took < timeout + _WATCHDOG_GRACE_S + 2 * startup, (took, timeout, startup)
    psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=timeout)
