"""The shared-memory ring that carries image batches from worker processes to the consumer.

One segment holds ``slots`` fixed-size slots, one per batch in flight. The consumer hands
a free slot to each task; the worker writes the batch's images into it and sends back only
their layout (targets, being small, travel as pickle bytes). The consumer is handed the slot
itself: the batch's image tensor *is* the slot's memory, and the slot goes back to the ring
when that tensor and every view of it are gone. A ring lends at most ``lend`` slots at once
(its spare slots beyond the tasks in flight); past that, for a consumer that keeps its
batches, images are copied out (one memcpy) and the slot freed at once, so the window of
tasks in flight never waits for the consumer. A batch that does not fit travels pickled.

A slot's life (the consumer moves it, except where the worker writes)::

    +--> free --acquire--> given --(worker) pack_batch--> written --unpack_batch--+
    |   (to one task)        |                       (its images in the slot)     |
    |                        | cancelled, failed or timed out (once nothing       +-- no lending token free:
    |                        | can write into it), or the batch did not fit       |   copied out (one memcpy)
    |                        v (it travelled pickled)                             |          |
    +<------------------- release <-----------------------------------------------|----------+
    |                                                                             |
    |                                                                             +-- a token free: lent
    |                                                                                 (the batch's images
    |                                                                                 ARE the slot)
    |                                                                                        |
    +<-- returned, with its token, once the tensor and every view of it are garbage <--------+

The segment itself (made, reserved, swept, attached) is ``flirdata._segments``'s; what travels
beside the slot (``PackedBatch``) is ``_wire``'s.
"""

from __future__ import annotations

import math
import pickle
import queue
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch

from flirdata._segments import (
    SEGMENT_PREFIX,
    aligned,
    array_over,
    attach,
    close_attached,
    create_segment,
    shm_free_bytes,
    unmap,
)
from flirdata.backends._wire import PackedBatch, ShmImages, dumps
from flirdata.errors import ShmCapacityWarning

__all__ = [
    "SEGMENT_PREFIX",  # re-exported: which segments are flirdata's
    "ShmCapacityWarning",  # re-exported: errors.py defines it, the dataset warns with it too
    "Slot",
    "SharedRing",
    "pack_batch",
    "slot_allocator",
    "unpack_batch",
    "close_attached",  # re-exported: a process that packs batches itself lets go of the ring with it
]

_warned = False


@dataclass(frozen=True)
class Slot:
    """Where one task may write its images: segment ``name``, bytes ``[offset, offset+nbytes)``."""

    name: str
    index: int
    offset: int
    nbytes: int


def _image_array(batch: Any) -> np.ndarray | None:
    """The images of a ``(images, ...)`` batch as a contiguous numpy array, if they have one."""
    if type(batch) is not tuple or not batch or not isinstance(batch[0], torch.Tensor):
        return None
    images = batch[0]
    if images.device.type != "cpu" or images.requires_grad:
        return None
    try:
        return np.ascontiguousarray(images.numpy())
    except (TypeError, RuntimeError):  # dtypes numpy lacks (bfloat16, ...)
        return None


def slot_allocator(slot: Slot) -> Callable[[tuple[int, ...], torch.dtype], torch.Tensor | None]:
    """Worker side: ``(shape, dtype) -> `` a tensor over ``slot``'s memory, or None if it does not fit.

    For ``flirdata.collate.batch_memory``: images stacked there need no copy in ``pack_batch``.
    One-shot: a second batch made in the same task (a collate that stacks twice) gets fresh
    memory, so it cannot overwrite the first.
    """
    used = False

    def allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        nonlocal used
        if used:
            return None
        used = True
        try:
            np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        except (TypeError, RuntimeError):  # dtypes numpy lacks
            return None
        if math.prod(shape) * np_dtype.itemsize > slot.nbytes:
            return None
        return torch.from_numpy(array_over(attach(slot.name).buf, shape, np_dtype, slot.offset))

    return allocate


def pack_batch(batch: Any, slot: Slot | None) -> Any:
    """Worker side: images into ``slot``, the rest into pickle bytes.

    The whole batch goes into the bytes when there is no slot, the batch is not
    ``(tensor, ...)``, or its images do not fit (correctness before speed); and it is
    returned as it is if the standard pickler cannot take it.
    """
    images = None if slot is None else _image_array(batch)
    if images is None or slot is None or images.nbytes > slot.nbytes:
        payload = dumps(batch)
        return batch if payload is None else PackedBatch(None, payload)
    payload = dumps(tuple(batch[1:]))
    if payload is None:
        return batch
    target = np.ndarray(images.shape, images.dtype, buffer=attach(slot.name).buf, offset=slot.offset)
    if target.ctypes.data != images.ctypes.data:  # not already collated into the slot
        np.copyto(target, images)
    layout = ShmImages(slot.offset, images.shape, images.dtype.str)
    del target, images  # a live view would keep the segment from closing
    return PackedBatch(layout, payload)


def _warn_once(problem: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"{problem}; batches are pickled through a pipe instead, which is slower. In docker, "
            "start the container with a larger --shm-size (e.g. --shm-size=2g); or lower "
            "prefetch, workers or batch_size.",
            ShmCapacityWarning,
            stacklevel=5,
        )


def _destroy(segment: SharedMemory) -> None:
    unmap(segment)
    try:
        segment.unlink()
    except FileNotFoundError:
        pass


def _give_back(free: queue.SimpleQueue[int], tokens: queue.SimpleQueue[int], index: int) -> None:
    """A lent slot's tensor is gone: the slot and the lending token return (any thread, even in GC)."""
    free.put(index)
    tokens.put(index)


class SharedRing:
    """``slots`` reusable slots of ``slot_bytes`` in one shared-memory segment (consumer side).

    ``acquire`` blocks until a slot is free; ``release`` may be called from any thread
    (executor callbacks free the slots of abandoned tasks when those finish). ``take`` hands a
    filled slot to the consumer, lending at most ``lend`` slots at a time: a ring for ``n``
    tasks in flight has ``n + lend`` slots, so lent slots never hold the window up.
    """

    def __init__(self, slot_bytes: int, slots: int, lend: int = 0) -> None:
        if not 0 <= lend < slots:
            raise ValueError(f"lend must be in [0, slots), got lend={lend} for {slots} slots")
        self.slot_bytes = aligned(slot_bytes)
        self.slots = slots
        self._segment = create_segment(self.slot_bytes * slots)  # reserved: never a SIGBUS later
        self.name = self._segment.name.lstrip("/")
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(slots):
            self._free.put(index)
        # One token per slot the consumer may hold; SimpleQueue, as its put is safe from a GC callback.
        self._tokens: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.lend = lend
        for token in range(lend):
            self._tokens.put(token)
        self._finalizer = weakref.finalize(self, _destroy, self._segment)

    @classmethod
    def create(cls, slot_bytes: int, slots: int, lend: int = 0) -> SharedRing | None:
        """A ring, or None (after one ``ShmCapacityWarning``) when /dev/shm cannot hold it.

        The size is checked up front, and the segment's pages are reserved when it is made
        (a /dev/shm filled meanwhile: the same warning, naming the bytes needed and free).
        """
        need = aligned(slot_bytes) * slots
        free = shm_free_bytes()
        if free is None or need <= free:
            try:
                return cls(slot_bytes, slots, lend)
            except OSError as exc:  # /dev/shm full (ShmFullError), not mounted, no permission, ...
                _warn_once(f"cannot create the shared-memory prefetch ring ({exc})")
                return None
        _warn_once(
            f"/dev/shm has {free / 2**20:.0f} MiB free but the prefetch ring needs "
            f"{need / 2**20:.0f} MiB ({slots} batches of {slot_bytes / 2**20:.1f} MiB)"
        )
        return None

    def acquire(self) -> Slot:
        index = self._free.get()
        return Slot(self.name, index, index * self.slot_bytes, self.slot_bytes)

    def release(self, index: int) -> None:
        self._free.put(index)

    def _buffer(self) -> memoryview:
        buffer = self._segment.buf
        if buffer is None:
            raise RuntimeError("flirdata: a batch arrived in shared memory but the ring is closed")
        return buffer

    def read(self, images: ShmImages) -> torch.Tensor:
        """Copy images out of their slot into a fresh tensor (one memcpy); the slot stays the caller's."""
        out = np.empty(images.shape, np.dtype(images.dtype))
        source = array_over(self._buffer(), images.shape, out.dtype, images.offset)
        np.copyto(out, source)
        del source
        return torch.from_numpy(out)

    def take(self, images: ShmImages, index: int) -> torch.Tensor:
        """The images of slot ``index`` as a tensor; the ring takes the slot back in either case.

        Lent (no copy) while a lending token is free: the tensor is a view of the slot, which
        returns to the ring when the tensor and all its views are garbage. Otherwise copied
        out and the slot released now.
        """
        try:
            self._tokens.get_nowait()
        except queue.Empty:
            try:
                return self.read(images)
            finally:
                self.release(index)
        try:
            view = array_over(self._buffer(), images.shape, np.dtype(images.dtype), images.offset)
        except BaseException:
            _give_back(self._free, self._tokens, index)
            raise
        # torch.from_numpy keeps ``view`` alive for as long as any tensor shares its memory.
        weakref.finalize(view, _give_back, self._free, self._tokens, index)
        return torch.from_numpy(view)

    @property
    def lent(self) -> int:
        """Slots the consumer holds right now (approximate while other threads take or give back)."""
        return self.lend - self._tokens.qsize()

    def close(self) -> None:
        """Unmap and unlink the segment (idempotent; also runs on garbage collection and exit)."""
        self._finalizer()


def unpack_batch(result: Any, ring: SharedRing | None, slot: Slot | None = None) -> Any:
    """Consumer side: the batch as the worker's collate returned it.

    With ``slot`` (the slot the task was given), the ring takes that slot back whatever
    happens: lent as the batch's images, or released (copied out, pickled, or an error).
    Without it the images are copied and the slot stays the caller's.
    """
    taken = False
    try:
        if not isinstance(result, PackedBatch):
            return result
        payload = pickle.loads(result.payload)
        if result.images is None:
            return payload
        if ring is None:
            raise RuntimeError("flirdata: a batch arrived in shared memory but the ring is closed")
        if slot is None:
            return (ring.read(result.images), *payload)
        taken = True
        return (ring.take(result.images, slot.index), *payload)
    finally:
        if slot is not None and ring is not None and not taken:
            ring.release(slot.index)
