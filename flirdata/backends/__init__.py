"""Parallel backends: interchangeable ways to run one ``Fetcher`` over a loader's tasks.

``BACKENDS`` maps each name to a factory ``(fetcher, workers, prefetch) -> Backend``:

* "sequential": the calling thread, the baseline (and the path of ``workers <= 1``);
* "dataloader": torch ``DataLoader`` workers;
* "threads": joblib's threading backend;
* "loky": a joblib loky process pool, images through a shared-memory ring;
* "process": ``concurrent.futures.ProcessPoolExecutor``, images through the same ring.
"""

from __future__ import annotations

from flirdata.backends.dataloader import DataLoaderBackend
from flirdata.backends.loky import make_loky_backend
from flirdata.backends.pool import PoolBackend
from flirdata.backends.process import make_process_backend
from flirdata.backends.protocol import Backend, BackendFactory, Fetcher, Task, WorkerCrashError
from flirdata.backends.sequential import SequentialBackend
from flirdata.backends.shm import ShmCapacityWarning
from flirdata.backends.spawning import MainModuleError
from flirdata.backends.threads import ThreadsBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendFactory",
    "DataLoaderBackend",
    "Fetcher",
    "MainModuleError",
    "PoolBackend",
    "SequentialBackend",
    "ShmCapacityWarning",
    "Task",
    "ThreadsBackend",
    "WorkerCrashError",
]

BACKENDS: dict[str, BackendFactory] = {
    "sequential": SequentialBackend,
    "dataloader": DataLoaderBackend,
    "threads": ThreadsBackend,
    "loky": make_loky_backend,
    "process": make_process_backend,
}
