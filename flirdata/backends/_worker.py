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
import select
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from flirdata.backends._shm import Slot, pack_batch, slot_allocator
from flirdata.backends._wire import portable_errors
from flirdata.backends.protocol import TaskFunction
from flirdata.collate import batch_memory, collate_detection

__all__ = [
    "THREAD_ENV",
    "tune_malloc",
    "limit_threads",
    "setup_worker",
    "watch_parent",
    "install_fetcher",
    "run_installed",
    "forkserver_context",
]

# Read by the BLAS / OpenMP runtimes when they load, so they must be in a child's
# environment before it imports numpy; one thread each keeps workers x threads <= cores.
THREAD_ENV: dict[str, str] = dict.fromkeys(
    (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ),
    "1",
)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 256 << 20
_MMAP_FALLBACK = 32 << 20  # the cap older glibc accepts for M_MMAP_THRESHOLD (HEAP_MAX/2)

_PARENT_POLL_S = 1.0  # fallback without pidfd: how late an orphaned worker may notice
_ORPHAN_EXIT = 3  # exit status of a worker whose parent died
_WATCH_LOCK = threading.Lock()
_WATCHING = 0  # pid of the process whose parent watch runs (a forked child must start its own)

_FETCHER: TaskFunction | None = None
# Whether the fetcher's batches may be stacked into the task's ring slot: only collate_detection's,
# as a user's collate may keep or combine what it stacks. Decided once, when the fetcher arrives.
_INTO_SLOT = False
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


def _exit_when_gone(pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the process has exited
    else:
        while _alive(pid):
            time.sleep(_PARENT_POLL_S)
    os._exit(_ORPHAN_EXIT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def watch_parent(parent: int | None = None) -> bool:
    """Exit this worker as soon as ``parent`` (default: the parent process) is gone.

    ``parent`` is the process that owns the loader. Fork-server workers must be told it: their
    own parent, the fork server, outlives the main process for as long as any worker lives.
    Without this watch, a main process killed with SIGKILL (or a crashed notebook kernel)
    leaves workers blocked on their task queue for good. One daemon thread per process;
    returns False if it was already running.
    """
    global _WATCHING
    with _WATCH_LOCK:
        if _WATCHING == os.getpid():
            return False
        _WATCHING = os.getpid()
    parent = os.getppid() if parent is None else parent
    try:
        pidfd: int | None = os.pidfd_open(parent)  # no pid-reuse race, no polling
    except (AttributeError, OSError):  # not Linux >= 5.3: poll the parent pid instead
        pidfd = None
    if pidfd is None and not _alive(parent):  # gone before the watch started
        os._exit(_ORPHAN_EXIT)
    threading.Thread(target=_exit_when_gone, args=(parent, pidfd), name="flirdata-parent-watch", daemon=True).start()
    return True


def setup_worker(*_: Any, owner: int | None = None) -> None:
    """Run once at the start of every worker process (also a DataLoader ``worker_init_fn``).

    ``owner`` is the pid of the process that owns the loader: the worker exits when it dies.
    """
    watch_parent(owner)
    limit_threads()
    tune_malloc()


def install_fetcher(fetcher: TaskFunction, owner: int | None = None) -> None:
    """Pool initializer: set the worker up and keep the fetcher (and its dataset) for good."""
    setup_worker(owner=owner)
    global _FETCHER, _INTO_SLOT
    _FETCHER = fetcher
    _INTO_SLOT = getattr(fetcher, "collate_fn", None) is collate_detection


def run_installed(task: Any, slot: Slot | None) -> Any:
    """The task function of process pools: fetch with the installed fetcher, pack for transport."""
    if _FETCHER is None:
        raise RuntimeError("flirdata worker: no fetcher installed (the pool initializer did not run)")
    into_slot = slot is not None and _INTO_SLOT  # collate_detection stacks into the slot itself
    with portable_errors(), batch_memory(slot_allocator(slot)) if into_slot else contextlib.nullcontext():
        batch = _FETCHER(task)
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
_PRELOAD = ["flirdata.backends._worker", "flirdata.dataset", "flirdata.collate", "flirdata.transforms"]


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
