"""``make_loader`` and ``Loader``: batches of a dataset through any backend, epoch by epoch.

The loader owns the options, the batch sampler and (lazily) one backend whose pool lives
until ``close()``; each ``iter(loader)`` maps the backend over the epoch's tasks. Which
backends there are, how one opens and how many workers are too many is the registry's
(``flirdata.backends.registry``).
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from flirdata._validate import check_int
from flirdata.backends.protocol import Backend, Fetcher, Task
from flirdata.backends.registry import (  # re-exported: they lived here, and callers may still look here
    WorkerCountWarning,
    backend_option_names,
    check_backend,
    check_backend_options,
    effective_backend,
    open_backend,
    usable_cores,
    warn_if_oversubscribed,
)
from flirdata.collate import collate_detection
from flirdata.errors import DataError, WorkerError
from flirdata.outputs import OUTPUTS, convert_batch
from flirdata.sampler import MAX_EPOCH, BatchSampler, resolve_shard

__all__ = [
    "LoaderOptions",
    "Loader",
    "WorkerCountWarning",
    "backend_option_names",
    "check_backend_options",
    "make_loader",
    "open_backend",
    "usable_cores",
    "warn_if_oversubscribed",
]


@dataclass(frozen=True)
class LoaderOptions:
    """Everything that configures a loader, validated once (see ``make_loader``)."""

    backend: str = "sequential"
    workers: int = 1
    batching: BatchSampler = BatchSampler(0, batch_size=32)  # order, shards, batches; sized per dataset
    collate_fn: Callable[[list[Any]], Any] = collate_detection
    prefetch: int = 2
    output: str = "uint8"
    timeout: float | None = None
    # The backend's own options as sorted (name, value) pairs: hashable, picklable, comparable.
    backend_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and 0 < self.timeout < math.inf):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {self.timeout!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; expected one of {sorted(OUTPUTS)}")
        check_backend(self.backend)
        for name, minimum in (("workers", 0), ("prefetch", 1)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))  # frozen: set once, here
        if not callable(self.collate_fn):
            raise ValueError(f"collate_fn must be callable, got {self.collate_fn!r}")
        options = dict(self.backend_options)  # from a mapping or pairs
        check_backend_options(self.backend, options)
        object.__setattr__(self, "backend_options", tuple(sorted(options.items())))  # frozen: set once, here

    @property
    def effective_backend(self) -> str:
        """The backend that runs: ``workers <= 1`` is always the in-thread "sequential" path."""
        return effective_backend(self.backend, self.workers)

    def sampler(self, size: int) -> BatchSampler:
        """The batch sampler of a dataset of ``size`` samples."""
        return replace(self.batching, size=size)


class Loader:
    """Iterable over ``(images, targets)`` batches; the same batches on every backend.

    Use it as a context manager (or call ``close()``) to stop its workers; breaking out of
    the loop is safe (pending batches are cancelled), and so is garbage collection. Pickling
    a loader pickles its dataset and options, never its pool.
    """

    def __init__(self, dataset: Any, options: LoaderOptions) -> None:
        self.dataset = dataset
        self.options = options
        self.sampler = options.sampler(len(dataset))
        self.epoch = 0
        self._backend: Backend | None = None
        self._active: weakref.ref[Iterator[Any]] | None = None

    @property
    def backend(self) -> Backend | None:
        """The running backend (its pool), or None before the first epoch and after ``close``."""
        return self._backend

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next ``iter(loader)``: its order and its augmentations."""
        self.epoch = check_int("epoch", epoch, 0, MAX_EPOCH)

    def tasks(self, epoch: int | None = None) -> list[Task]:
        """The epoch's tasks ``(epoch, indices)``, as the backend receives them."""
        epoch = self.epoch if epoch is None else epoch
        return [(epoch, batch) for batch in self.sampler.batches(epoch)]

    def __iter__(self) -> Iterator[Any]:
        """The current epoch's batches; one epoch at a time per loader.

        Raises:
            RuntimeError: an earlier ``iter(loader)`` is still part-way through its epoch
                (``zip(loader, loader)``, a nested loop over the same loader).
        """
        self._refuse_second_epoch()
        batches = self._iterate(self._ensure_backend(), self.tasks())
        self._active = weakref.ref(batches)
        return batches

    def _refuse_second_epoch(self) -> None:
        # Two epochs at once would share one pool's window and ring: refuse rather than let
        # one silently end the other. An iterator that is still referenced counts, started or not.
        active = None if self._active is None else self._active()
        if active is not None and inspect.getgeneratorstate(active) != inspect.GEN_CLOSED:
            raise RuntimeError(
                f"flirdata loader: epoch {self.epoch} is already being iterated; a loader serves one epoch "
                "at a time. Finish or close that iteration first (a `for` loop closes it when it ends or "
                "breaks), or make a second loader for a second stream of batches."
            )
        self._close_active()

    def _iterate(self, backend: Backend, tasks: list[Task]) -> Iterator[Any]:
        batches = backend.imap(tasks)
        try:
            for batch in batches:
                yield convert_batch(batch, self.options.output)
        except WorkerError:
            self._drop_backend()  # a broken or stuck pool cannot be reused; the next epoch starts anew
            raise
        finally:
            batches.close()

    def _ensure_backend(self) -> Backend:
        if self._backend is None:
            o = self.options
            fetcher = Fetcher(self.dataset, o.collate_fn)
            options = dict(o.backend_options)
            self._backend = open_backend(o.backend, fetcher, o.workers, o.prefetch, o.timeout, options)
        return self._backend

    def _close_active(self) -> None:
        active = None if self._active is None else self._active()
        self._active = None
        if active is not None:
            active.close()  # type: ignore[attr-defined]

    def _drop_backend(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def close(self) -> None:
        """Stop the current epoch and the workers, free the shared memory (idempotent)."""
        try:
            self._close_active()
        finally:
            self._drop_backend()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # never raise from a finalizer (interpreter shutdown, half-built object)
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "options": self.options, "epoch": self.epoch}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Loader.__init__(self, state["dataset"], state["options"])
        self.epoch = state["epoch"]

    def __repr__(self) -> str:
        o = self.options
        return (
            f"Loader(backend={o.backend!r}, workers={o.workers}, batch_size={o.batching.batch_size}, "
            f"batches={len(self)}, epoch={self.epoch})"
        )


def make_loader(
    dataset: Any,
    backend: str = "sequential",
    workers: int = 1,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    collate_fn: Callable[[list[Any]], Any] = collate_detection,
    prefetch: int = 2,
    output: str = "uint8",
    timeout: float | None = None,
    backend_options: Mapping[str, Any] | None = None,
) -> Loader:
    """A loader of ``collate_fn([dataset[i] for i in batch])`` batches over ``backend``.

    Args:
        dataset: map-style dataset; if it has ``set_epoch``, workers call it per task.
        backend: a key of ``BACKENDS`` (``flirdata.backends.registry``).
        workers: worker threads or processes; ``<= 1`` runs in the calling thread.
        batch_size, shuffle, seed: see ``BatchSampler``.
        drop_last: False (default) pads the shards with the order's head, as
            ``DistributedSampler`` does; True cuts the order to equal shards and drops the
            short last batch. Either way every rank serves ``len(loader)`` batches.
        rank, world_size: this process's shard; None (default) takes it from the
            initialised ``torch.distributed`` group, else ``RANK``/``WORLD_SIZE`` (torchrun),
            else 0 and 1, once, here. Pass ``rank=0, world_size=1`` to read everything.
        collate_fn: turns a list of samples into a batch (picklable for process backends).
        prefetch: batches in flight per worker.
        output: what the images of a batch become, in the consumer (a key of ``OUTPUTS``):
            "uint8" (default, as collated), "float" (float32 in [0, 1]), or "float_rgb"
            (float32 in [0, 1] with 3 channels, grey repeated: what torchvision's detection
            models take). Workers still send uint8, 4x fewer bytes.
        timeout: a batch that does not arrive within ``timeout`` seconds of being waited for
            raises ``LoaderTimeoutError`` (a stopped or stuck worker), on every backend; the
            stuck pool is closed and the next epoch starts a new one. A worker's start-up is
            not part of that wait: the first batch of a new pool (on "ray", of each actor) may
            also take the larger of ``timeout`` and 60 s (its start allowance; past it the
            error says a worker did not start). None (default) waits for ever; the "sequential" path does its work in
            the calling thread and never waits.
        backend_options: options of ``backend``, passed to its factory as keyword arguments
            (``backend_option_names(backend)`` lists them; unused when ``workers <= 1``).
            "ray": ``address`` (the cluster; default ``RAY_ADDRESS``, else a local instance
            started and stopped with the loader), ``ship_images`` (the driver reads the image
            files and sends their bytes to the actors, for nodes without the dataset; default
            False), ``retries`` (how often a lost actor is replaced and its tasks re-run;
            default 3). The other backends take none.

    Raises:
        ValueError: an unknown backend or backend option, an invalid number, a malformed
            ``RANK``/``WORLD_SIZE``, an empty dataset.

    Warns:
        WorkerCountWarning: more workers than this process may use cores.
    """
    _refuse_empty(dataset)
    rank, world_size = resolve_shard(rank, world_size)  # in the main process: workers get plain ints
    batching = BatchSampler(0, batch_size, shuffle, seed, drop_last, rank, world_size)
    extra = tuple((backend_options or {}).items())
    options = LoaderOptions(backend, workers, batching, collate_fn, prefetch, output, timeout, extra)
    warn_if_oversubscribed(options.backend, options.workers, stacklevel=2, backend_options=dict(extra))
    return Loader(dataset, options)


def _refuse_empty(dataset: Any) -> None:
    if len(dataset) == 0:
        where = getattr(dataset, "split_dir", None)
        raise DataError(f"{where}: the split has no images" if where else "the dataset is empty: nothing to load")
