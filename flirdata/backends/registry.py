"""The backends' registry: each name, its factory and what it is; opening one, its options, too many workers.

``BACKENDS`` maps a name to its factory ``(fn, workers, prefetch, timeout, **options) -> Backend``,
and ``KINDS`` to what the backend declares it is (``BackendKind``: parallel or not, threads or
processes, whether its workers may run on other machines, the extra it needs). The loader,
export and bench reach the backends through here and ask ``KINDS``, never a backend's name.
``flirdata.names.BACKEND_NAMES`` repeats the keys for parsers that must not import the backends
(a test proves the two equal).
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from collections.abc import Mapping
from typing import Any

from flirdata._cores import usable_cores
from flirdata.backends import dataloader, loky, process, ray, sequential, threads
from flirdata.backends.protocol import Backend, BackendFactory, BackendKind, TaskFunction, check_semaphores
from flirdata.errors import WorkerCountWarning

__all__ = [
    "BACKENDS",
    "EXTRAS",
    "IN_THREAD",
    "KINDS",
    "WorkerCountWarning",
    "backend_option_names",
    "check_backend",
    "check_backend_options",
    "effective_backend",
    "installed_backends",
    "open_backend",
    "usable_cores",
    "warn_if_oversubscribed",
]

# name -> (factory, what it is), in the order the command lines list them.
_REGISTERED: dict[str, tuple[BackendFactory, BackendKind]] = {
    "sequential": (sequential.SequentialBackend, sequential.KIND),
    "dataloader": (dataloader.DataLoaderBackend, dataloader.KIND),
    "threads": (threads.ThreadsBackend, threads.KIND),
    "loky": (loky.make_loky_backend, loky.KIND),
    "process": (process.make_process_backend, process.KIND),
    "ray": (ray.make_ray_backend, ray.KIND),
}
BACKENDS: dict[str, BackendFactory] = {name: factory for name, (factory, _) in _REGISTERED.items()}
KINDS: dict[str, BackendKind] = {name: kind for name, (_, kind) in _REGISTERED.items()}
# Backends that need an optional extra: name -> the package it imports (and the extra's name).
EXTRAS: dict[str, str] = {name: kind.extra for name, kind in KINDS.items() if kind.extra}
# What runs when workers <= 1, whichever backend was asked for (joblib's n_jobs=1): a pool of one
# worker would only add transport to the same work.
IN_THREAD = "sequential"


def installed_backends() -> list[str]:
    """The names of ``BACKENDS`` whose optional extra, if any, is installed (nothing is imported)."""
    return [name for name in BACKENDS if name not in EXTRAS or importlib.util.find_spec(EXTRAS[name]) is not None]


def check_backend(name: str) -> str:
    """``name`` if it is a key of ``BACKENDS``, else ValueError naming them."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    return name


def effective_backend(name: str, workers: int) -> str:
    """The backend that runs: ``workers <= 1`` is always the in-thread ``IN_THREAD`` path."""
    return name if workers > 1 else IN_THREAD


def backend_option_names(name: str) -> list[str]:
    """The options backend ``name`` takes: its factory's keyword-only parameters, sorted."""
    parameters = inspect.signature(BACKENDS[check_backend(name)]).parameters.values()
    return sorted(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_backend_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse an option ``name`` does not take, naming those it does (their values are checked when it opens)."""
    valid = backend_option_names(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = f"expected one of {valid}" if valid else "it takes none"
        raise ValueError(f"unknown option {unknown[0]!r} for backend {name!r}; {takes}")


def open_backend(
    name: str,
    fn: TaskFunction,
    workers: int,
    prefetch: int = 2,
    timeout: float | None = None,
    backend_options: Mapping[str, Any] | None = None,
) -> Backend:
    """``BACKENDS[name]`` running ``fn`` (picklable, for process backends) over the tasks given to its ``imap``.

    ``workers <= 1`` is always the in-thread "sequential" path, as in ``make_loader`` (the
    options of ``name`` are checked, then unused). ``backend_options`` are passed to the
    factory as keyword arguments (see ``make_loader``). The caller closes the backend (its
    pool lives until then).

    Raises:
        ValueError: an unknown backend name, or an option it does not take.
    """
    options = dict(backend_options or {})
    check_backend_options(name, options)
    effective = effective_backend(name, workers)
    if effective != name:
        options = {}
    if KINDS[effective].needs_semaphores:
        check_semaphores(effective)
    return BACKENDS[effective](fn, workers, prefetch, timeout, **options)


def warn_if_oversubscribed(
    backend: str, workers: int, stacklevel: int = 2, backend_options: Mapping[str, Any] | None = None
) -> None:
    """``WorkerCountWarning`` if ``workers`` parallel workers of ``backend`` exceed the usable cores.

    Not for a backend whose workers may run on other machines with these options (its kind's
    ``runs_elsewhere``: "ray" with a cluster), where the cluster's CPUs count.
    """
    kind = KINDS[effective_backend(check_backend(backend), workers)]
    if not kind.parallel or kind.runs_elsewhere(**(backend_options or {})):
        return
    cores = usable_cores()
    if workers > cores:
        warnings.warn(
            f"flirdata: workers={workers} is more than the {cores} cores this process may use; "
            f"every {backend!r} worker holds its own copy of the dataset and pipeline, so workers "
            "beyond the cores add memory and start-up time, not speed",
            WorkerCountWarning,
            stacklevel=stacklevel + 1,
        )
