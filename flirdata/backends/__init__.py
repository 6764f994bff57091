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

A factory's keyword-only parameters are its options (``make_loader(backend_options=...)``).

The path of one loader batch::

    Loader.__iter__ -> tasks (epoch, indices) from BatchSampler
      -> backend.imap: mapping.bounded_map submits up to workers * prefetch tasks
        -> worker: Fetcher(task) = collate([dataset.sample(i, epoch) for i in indices])
           (process pools: images packed into a shared-memory ring slot, _shm.py)
      <- results in task order; the consumer converts them (outputs.py) and trains

The modules starting with ``_`` are internals: the process-pool window (``_pool``), the
shared-memory ring (``_shm``), per-worker set-up (``_worker``) and how workers start from
any script (``_spawning``).
"""

from __future__ import annotations

import importlib.util

from flirdata.backends._shm import ShmCapacityWarning
from flirdata.backends._spawning import CollatePicklingError, MainModuleError
from flirdata.backends.dataloader import DataLoaderBackend
from flirdata.backends.loky import make_loky_backend
from flirdata.backends.process import make_process_backend
from flirdata.backends.protocol import Backend, BackendFactory, Fetcher, Task, TaskFunction, WorkerCrashError
from flirdata.backends.ray import make_ray_backend
from flirdata.backends.sequential import SequentialBackend
from flirdata.backends.threads import ThreadsBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendFactory",
    "CollatePicklingError",
    "EXTRAS",
    "Fetcher",
    "MainModuleError",
    "ShmCapacityWarning",
    "Task",
    "TaskFunction",
    "WorkerCrashError",
    "installed_backends",
]

# Backends that need an optional extra: name -> the package it imports (and the extra's name).
EXTRAS: dict[str, str] = {"ray": "ray"}


def installed_backends() -> list[str]:
    """The names of ``BACKENDS`` whose optional extra, if any, is installed (nothing is imported)."""
    return [name for name in BACKENDS if name not in EXTRAS or importlib.util.find_spec(EXTRAS[name]) is not None]


BACKENDS: dict[str, BackendFactory] = {
    "sequential": SequentialBackend,
    "dataloader": DataLoaderBackend,
    "threads": ThreadsBackend,
    "loky": make_loky_backend,
    "process": make_process_backend,
    "ray": make_ray_backend,
}
