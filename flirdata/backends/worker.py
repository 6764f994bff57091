"""Per-worker setup: thread limits, allocator tuning, and the worker-global fetcher.

Every worker process runs ``install_fetcher`` once, as its pool initializer: the dataset
crosses the process boundary once per worker, not once per task, and each task then only
carries ``(epoch, indices)`` and a shared-memory slot.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from flirdata.backends.protocol import Fetcher, Task, add_note
from flirdata.backends.shm import Slot, pack_batch

__all__ = [
    "THREAD_ENV",
    "tune_malloc",
    "limit_threads",
    "setup_worker",
    "install_fetcher",
    "run_installed",
    "portable_exception",
    "forkserver_context",
]

# Read by the BLAS / OpenMP runtimes when they load, so they must be in a child's
# environment before it imports numpy; one thread each keeps workers x threads <= cores.
THREAD_ENV: dict[str, str] = dict.fromkeys(
    ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"),
    "1",
)  # fmt: skip

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 256 << 20
_MMAP_FALLBACK = 32 << 20  # the cap older glibc accepts for M_MMAP_THRESHOLD (HEAP_MAX/2)

_FETCHER: Fetcher | None = None
_LIMITS: Any = None  # threadpoolctl's limiter, kept alive for the worker's lifetime


def tune_malloc() -> bool:
    """Keep glibc from unmapping and re-faulting large image buffers on every image.

    By default glibc serves allocations over its mmap threshold (128 KiB at first, a
    640x512 float image is 1.3 MiB) with fresh ``mmap`` and returns them on ``free``, so
    every augmentation pays page faults again (measured here: up to 30% of its time).
    Raising the mmap and trim thresholds keeps freed buffers in the heap for reuse.
    Process-wide and idempotent; returns False where there is no glibc ``mallopt``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other libcs without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    mmap = mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 or mallopt(_M_MMAP_THRESHOLD, _MMAP_FALLBACK) == 1
    return trim and mmap


def limit_threads() -> None:
    """One thread per library in this process: parallelism comes from the workers."""
    os.environ.update(THREAD_ENV)  # for libraries loaded later and for grandchildren
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: BLAS pools that loaded before THREAD_ENV stay as they are
        return
    global _LIMITS
    _LIMITS = threadpool_limits(limits=1)


def setup_worker(*_: Any) -> None:
    """Run once at the start of every worker process (also a DataLoader ``worker_init_fn``)."""
    limit_threads()
    tune_malloc()


def install_fetcher(fetcher: Fetcher) -> None:
    """Pool initializer: set the worker up and keep the fetcher (and its dataset) for good."""
    setup_worker()
    global _FETCHER
    _FETCHER = fetcher


def portable_exception(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a ``RuntimeError`` saying what it was.

    An exception class whose ``__init__`` does not take its ``args`` back fails to unpickle
    in the consumer, where the pool would report it as a broken pool, hiding the real error.
    """
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        substitute = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
        for note in getattr(exc, "__notes__", ()):
            add_note(substitute, note)
        return substitute


def run_installed(task: Task, slot: Slot | None) -> Any:
    """The task function of process pools: fetch with the installed fetcher, pack for transport."""
    if _FETCHER is None:
        raise RuntimeError("flirdata worker: no fetcher installed (the pool initializer did not run)")
    try:
        batch = _FETCHER(task)
    except Exception as exc:
        portable = portable_exception(exc)
        if portable is exc:
            raise
        raise portable from None
    return pack_batch(batch, slot)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


_FORKSERVER_LOCK = threading.Lock()
_FORKSERVER_STARTED = False
# Imported once by the fork server, so each worker forks with torch, cv2 and albumentations
# loaded (fast start, pages shared copy-on-write) instead of importing them again.
_PRELOAD = ["flirdata.backends.worker", "flirdata.dataset", "flirdata.collate", "flirdata.transforms"]


def forkserver_context() -> multiprocessing.context.BaseContext:
    """The "forkserver" context, its server started once with flirdata preloaded.

    Not "fork": a child forked after OpenCV's or torch's thread pool started can hang in its
    first call. The server is started under ``THREAD_ENV`` so that it stays single-threaded
    (numpy and cv2 start BLAS threads at import otherwise) and every fork from it is safe.
    The server is process-wide: if something else started it first, it is used as it is.
    """
    global _FORKSERVER_STARTED
    context = multiprocessing.get_context("forkserver")
    with _FORKSERVER_LOCK:
        if not _FORKSERVER_STARTED:
            context.set_forkserver_preload(_PRELOAD)
            with _environ(THREAD_ENV):
                multiprocessing.forkserver.ensure_running()
            _FORKSERVER_STARTED = True
    return context
