"""Parallel backends: interchangeable ways to run one picklable task function over a list of tasks.

``BACKENDS`` maps each name to a factory ``(fn, workers, prefetch, timeout) -> Backend`` whose
``imap(tasks)`` yields ``fn(task)`` in task order with a bounded number in flight:

* "sequential": the calling thread, the baseline (and the path of ``workers <= 1``);
* "dataloader": torch ``DataLoader`` workers;
* "threads": joblib's threading backend;
* "loky": a joblib loky process pool, images through a shared-memory ring;
* "process": ``concurrent.futures.ProcessPoolExecutor``, images through the same ring;
* "ray": Ray actors on this machine or a cluster, batches through Ray's object store (Ray
  is an optional extra, imported when the backend opens).

A factory's keyword-only parameters are its options (``make_loader(backend_options=...)``), and
each backend module declares what it is (``KIND``, a ``BackendKind``). The registry
(``registry``) holds both, opens a backend and judges a worker count; callers ask it.

The path of one loader batch::

    Loader.__iter__ -> tasks (epoch, indices) from BatchSampler
      -> backend.imap: mapping.bounded_map submits up to workers * prefetch tasks
        -> worker: Fetcher(task) = collate([dataset.sample(i, epoch) for i in indices])
           (process pools: images packed into a shared-memory ring slot, _shm.py)
      <- results in task order; the consumer converts them (outputs.py) and trains

The modules starting with ``_`` are internals: the process-pool window (``_pool``), the
shared-memory ring (``_shm``, over ``flirdata._segments``), what a batch or an error travels as
(``_wire``), per-worker set-up (``_worker``), how workers start from any script (``_spawning``)
and Ray's actor, address and session (``_ray_*``).
"""

from __future__ import annotations

from flirdata.backends._shm import ShmCapacityWarning
from flirdata.backends._spawning import CollatePicklingError, MainModuleError
from flirdata.backends.protocol import (
    Backend,
    BackendFactory,
    BackendKind,
    Fetcher,
    Task,
    TaskFunction,
    WorkerCrashError,
)
from flirdata.backends.registry import (
    BACKENDS,
    EXTRAS,
    KINDS,
    backend_option_names,
    check_backend_options,
    installed_backends,
    open_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendFactory",
    "BackendKind",
    "CollatePicklingError",
    "EXTRAS",
    "Fetcher",
    "KINDS",
    "MainModuleError",
    "ShmCapacityWarning",
    "Task",
    "TaskFunction",
    "WorkerCrashError",
    "backend_option_names",
    "check_backend_options",
    "installed_backends",
    "open_backend",
]
