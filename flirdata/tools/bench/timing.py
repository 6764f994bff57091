"""How the benchmarks time work: one core for the ideal, one timed window for a rate.

``calibrate_warmed`` is the single-core reference every parallel rate is compared with: a
tight loop of ``dataset[i]`` (decode + augment) and ``collate_detection``, no framework, run
in a fresh worker-like process (the fork server and ``setup_worker`` of the process backends:
one thread per library, the workers' malloc tuning) after one untimed pass over the same
batches. Measured there rather than in the benchmark's own process, the ideal has the
workers' settings and warmth, so no backend can beat it by a measurement artefact (a cold
main process with glibc's default allocator is slower than a worker, and made ``process``
look faster than ideal). ``calibrate`` is the same loop in this process, for callers that
want this process's own rate.
``Stopwatch`` is the one timer: wall seconds, the CPU this process tree used and how many cores
other processes of a shared machine took meanwhile. ``timed_window`` uses it over a stretch of
any batch iterator; a caller whose loop does more than take batches (``train_demo.py``'s training
loop) starts and stops it around its own loop.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from flirdata.tools.bench.machine import busy_seconds, tree_cpu_times, tree_cpu_used

__all__ = [
    "Stopwatch",
    "Window",
    "single_threaded",
    "tight_batches",
    "calibrate",
    "calibrate_warmed",
    "timed_window",
    "tune_like_a_worker",
    "worker_context",
]


class Window(NamedTuple):
    """One timed stretch of batches."""

    images: int
    seconds: float
    cpu_seconds: float  # this process and its children
    others_cores: float  # CPU other processes took, in cores (0 when the machine was ours)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return self.cpu_seconds / self.images * 1e3

    @property
    def cores_used(self) -> float:
        """CPU seconds of this process tree per wall second: the cores the stretch kept busy."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


class Stopwatch:
    """Started at construction; ``stop(images)`` gives the ``Window`` since then."""

    def __init__(self) -> None:
        self._busy, self._mine = busy_seconds(), tree_cpu_times()
        self._start = time.perf_counter()

    def stop(self, images: int) -> Window:
        elapsed = time.perf_counter() - self._start
        used = tree_cpu_used(self._mine)
        others = (busy_seconds() - self._busy - used) / elapsed if elapsed > 0 else 0.0
        return Window(images, elapsed, used, max(others, 0.0))


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """OpenCV and torch at one thread, restored after: the 'single-thread' of the ideal."""
    import cv2
    import torch

    cv_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_num_threads(torch_threads)


def tight_batches(dataset: Any, batch_size: int, seed: int) -> Iterator[Any]:
    """``collate_detection`` over a seeded shuffle of ``dataset``, in this thread, no framework."""
    from flirdata.collate import collate_detection

    order = np.random.default_rng(seed).permutation(len(dataset))
    for k in range(0, len(order), batch_size):
        yield collate_detection([dataset[int(i)] for i in order[k : k + batch_size]])


def timed_window(batches: Iterable[Any], skip: int, count: int) -> Window:
    """Skip ``skip`` batches (warm-up), then time the next ``count`` (fewer if they run out).

    A batch is ``(images, targets, ...)``; its images are ``len(batch[1])``. Stopping after
    ``count`` rather than at the end matters: a DataLoader stops its workers (and loses their
    CPU times) when its epoch ends.
    """
    batches = iter(batches)
    for _ in range(skip):
        next(batches, None)
    watch, images = Stopwatch(), 0
    for batch in itertools.islice(batches, count):
        images += len(batch[1])
    return watch.stop(images)


def _pickle_cost(batch: Any) -> dict[str, float]:
    start = time.perf_counter()
    data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(data)
    return {"pickle_ms_per_batch": (time.perf_counter() - start) * 1e3, "batch_mb": len(data) / 2**20}


def calibrate(dataset: Any, batch_size: int, batches: int, seed: int) -> dict[str, float]:
    """Tight-loop rate of decode + augment + collate on one thread of this process, and a batch's pickle cost."""
    with single_threaded():
        stream = tight_batches(dataset, batch_size, seed)
        batch = next(stream)  # warm-up, and the batch whose pickling is timed
        window = timed_window(stream, 0, batches)
    return {"tight_images_per_s": window.images_per_s, **_pickle_cost(batch)}


def _warmed_calibration(dataset: Any, batch_size: int, batches: int, seed: int) -> dict[str, float]:
    """Runs in the calibration process: one untimed pass over the batches, then the same pass timed."""
    # Warm-up (imports, allocator arenas, the page cache of these files); keeps the first (full) batch to pickle.
    warm_up = tight_batches(dataset, batch_size, seed)
    batch = next(warm_up)
    collections.deque(itertools.islice(warm_up, batches - 1), maxlen=0)
    window = timed_window(tight_batches(dataset, batch_size, seed), 0, batches)
    return {
        "tight_images_per_s": window.images_per_s,
        "tight_cpu_ms_per_image": window.cpu_ms_per_image,
        "tight_others_cores": window.others_cores,
        **_pickle_cost(batch),
    }


def calibrate_warmed(dataset: Any, batch_size: int, batches: int, seed: int) -> dict[str, float]:
    """Single-core rate of decode + augment + collate in a warmed-up process with the workers' settings.

    The loop of ``calibrate`` over ``batches`` batches, run twice (the first pass untimed) in
    one fresh process started as the process backends start theirs (fork server, thread
    limits, malloc tuning). Returns ``calibrate``'s keys plus the CPU ms per image and the
    cores other processes took during the timed pass (``tight_cpu_ms_per_image``,
    ``tight_others_cores``).
    """
    from flirdata.backends._worker import forkserver_context, setup_worker  # torch: imported when used

    if batches < 1:
        raise ValueError(f"calibrate_warmed: batches {batches!r}: expected at least 1")
    with ProcessPoolExecutor(
        1, mp_context=forkserver_context(), initializer=partial(setup_worker, owner=os.getpid())
    ) as pool:
        return pool.submit(_warmed_calibration, dataset, batch_size, batches, seed).result()


def worker_context() -> Any:
    """The multiprocessing context flirdata's process backends start workers with (a fork server,
    flirdata preloaded), for a benchmark's own pool to start as theirs do."""
    from flirdata.backends._worker import forkserver_context  # torch: imported when used

    return forkserver_context()


def tune_like_a_worker() -> bool:
    """This process's allocator tuned as a worker's (work timed here then has the workers' settings)."""
    from flirdata.backends._worker import tune_malloc

    return tune_malloc()
