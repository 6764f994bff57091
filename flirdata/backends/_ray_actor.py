"""Both ends of one Ray task: the actor that runs it, the image bytes sent with it, the batch it returns.

``RayWorker`` is the body of each actor (made remote by ``flirdata.backends.ray``): set up
like every flirdata worker process (one thread per library, the allocator tuned), it fetches
the task function from the object store when the driver first asks whether it is ready (or on
its first task) and keeps it, so the function (and its dataset) reaches each actor once, and
again only in an actor that replaced a dead one.
Like a spawned multiprocessing worker, it can import what the driver can: the driver's
``sys.path`` entries are added after its own (Ray itself only adds the script's folder and the
working directory), so a dataset class from a module on the driver's path unpickles there.

``TaskImages`` is the driver's side of ``ship_images``: it reads, with the dataset's own
checks, the image files a task will read, and the actor hands those bytes to the dataset
through ``flirdata.images.supplied_image_bytes`` instead of opening files.

``Delivery`` is a batch on its way back: the images as a numpy array, which Ray writes into
its object store without pickling and the driver reads in place (then copies once, into memory
of its own), and everything else as one pickle (the dataloader backend's ``Shipment``); Ray's
own serialisation, every tensor pickled on its own, costs several times the CPU (measured in
``benchmarks/RESULTS.md``, "Ray").
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flirdata.backends._wire import Delivery, portable_errors
from flirdata.backends._worker import limit_threads, tune_malloc
from flirdata.backends.protocol import TaskFunction
from flirdata.errors import ImageError
from flirdata.images import dataset_folder, read_image_bytes, supplied_image_bytes

__all__ = ["RayWorker", "TaskImages"]

# What a FlirDetection-like dataset must have for its files to be read on the driver.
_DATASET_NEEDS = ("image_path", "root", "split_dir", "max_image_bytes")


class RayWorker:
    """One actor: runs ``fn(task)`` for the tasks it is sent, in the order it is sent them.

    The function arrives as ``[ObjectRef]``: a reference nested in a list is not resolved by
    Ray, so the actor fetches it once, in ``ready`` (the driver's first call) or else on its
    first task, and no constructor argument pins it (Ray warns about constructor arguments in
    the object store of restartable actors).
    """

    def __init__(self, driver_path: list[str]) -> None:
        sys.path.extend(entry for entry in driver_path if entry not in sys.path)
        limit_threads()
        tune_malloc()
        self._fn: TaskFunction | None = None

    def ready(self, fn_box: list[Any]) -> bool:
        """Fetch the task function now (its dataset, the modules it imports): the actor is then started."""
        self._load(fn_box)
        return True

    def run(self, fn_box: list[Any], task: Any, images: dict[str, bytes] | None = None) -> Any:
        """``fn(task)``, with ``images`` read from memory instead of disk; errors come back picklable."""
        fn = self._load(fn_box)  # an actor that replaced a dead one gets here without ready()
        supplied = contextlib.nullcontext() if images is None else supplied_image_bytes(images)
        with portable_errors(), supplied:
            return Delivery.pack(fn(task))

    def _load(self, fn_box: list[Any]) -> TaskFunction:
        if self._fn is None:
            import ray

            self._fn = ray.get(fn_box[0])
        return self._fn

    def where(self) -> tuple[str, int]:
        """``(Ray node id, pid)`` of this actor."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()


@dataclass(frozen=True)
class TaskImages:
    """Reads on the driver the image files of a task: ``{path: bytes}``, checked as the dataset reads them."""

    fn: TaskFunction
    within: Path
    max_bytes: int

    @classmethod
    def of(cls, fn: TaskFunction) -> TaskImages:
        """The reader for ``fn``'s tasks.

        Raises:
            ValueError: ``fn`` does not say which samples a task reads (``fn.samples(task)``),
                or its dataset is not a FlirDetection-like one (``image_path``, ``root``, ...).
        """
        dataset = getattr(fn, "dataset", None)
        if not callable(getattr(fn, "samples", None)) or not all(hasattr(dataset, a) for a in _DATASET_NEEDS):
            raise ValueError(
                f"flirdata 'ray' backend: ship_images=True needs a task function with samples(task) over a "
                f"dataset with {', '.join(_DATASET_NEEDS)} (a FlirDetection), got {type(fn).__name__} over "
                f"{type(dataset).__name__}"
            )
        return cls(fn, dataset_folder(dataset.root, dataset.split_dir), dataset.max_image_bytes)

    def __call__(self, task: Any) -> dict[str, bytes]:
        dataset = self.fn.dataset  # type: ignore[attr-defined]
        files = {}
        for i in self.fn.samples(task):  # type: ignore[attr-defined]
            path = dataset.image_path(i)
            try:
                files[str(path)] = read_image_bytes(path, self.within, self.max_bytes)
            except ImageError:
                continue  # not shipped: the actor reads it and reports it as the dataset words it
        return files
