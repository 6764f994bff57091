"""The shared-memory ring that carries image batches from worker processes to the consumer.

One segment holds ``slots`` fixed-size slots, one per batch in flight. The consumer hands
a free slot to each task; the worker writes the batch's images into it and sends back only
their layout (targets, being small, travel as pickle bytes). The consumer is handed the slot
itself: the batch's image tensor *is* the slot's memory, and the slot goes back to the ring
when that tensor and every view of it are gone. A ring lends at most ``lend`` slots at once
(its spare slots beyond the tasks in flight); past that, for a consumer that keeps its
batches, images are copied out (one memcpy) and the slot freed at once, so the window of
tasks in flight never waits for the consumer. A batch that does not fit travels pickled.
"""

from __future__ import annotations

import io
import math
import os
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

from flirdata.backends._segments import SEGMENT_PREFIX, create_segment, new_segment_name, shm_free_bytes

__all__ = [
    "SEGMENT_PREFIX",
    "ShmCapacityWarning",
    "Slot",
    "ShmImages",
    "PackedBatch",
    "SharedRing",
    "dumps",
    "pack_batch",
    "slot_allocator",
    "unpack_batch",
    "close_attached",
    "new_segment_name",
    "shm_free_bytes",
]

_ALIGN = 64  # slots and cached frames start on a cache line
_warned = False


class ShmCapacityWarning(UserWarning):
    """/dev/shm is too small for the prefetch ring; batches are pickled through a pipe instead."""


@dataclass(frozen=True)
class Slot:
    """Where one task may write its images: segment ``name``, bytes ``[offset, offset+nbytes)``."""

    name: str
    index: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class ShmImages:
    """The layout of images a worker wrote into a slot."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class PackedBatch:
    """A batch in transit: its images in a ring slot (or None), everything else pickled.

    ``payload`` is plain pickle bytes, not objects, on purpose: process pools send results
    with multiprocessing's ForkingPickler, for which torch registers a reduction that moves
    every tensor into a shared-memory file of its own and passes the descriptor over a
    socket; for the two small target tensors of every image that cost more than the
    augmentation itself (measured: the main process at 28% of a core, workers preempted).
    """

    images: ShmImages | None
    payload: bytes


class _BatchPickler(pickle.Pickler):
    """Plain CPU tensors pickled as numpy arrays, which is ~10x cheaper than torch's own
    reduction (measured on 32 targets: 6.8 ms to pickle and 9.3 ms to unpickle, against
    0.75 ms and 0.2 ms); the consumer gets ``torch.from_numpy`` of its own copy."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.layout == torch.strided and obj.device.type == "cpu":
            try:
                return torch.from_numpy, (obj.numpy(),)
            except (TypeError, RuntimeError):  # requires_grad, conj bit, dtypes numpy lacks
                pass
        return NotImplemented


def dumps(obj: Any) -> bytes | None:
    """Pickle bytes of ``obj`` (tensors by value, as arrays), or None if it cannot be pickled."""
    buffer = io.BytesIO()
    try:
        _BatchPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception:  # e.g. objects only torch's ForkingPickler reductions can carry
        return None
    return buffer.getvalue()


def _aligned(n: int) -> int:
    """``n`` bytes rounded up to a whole number of cache lines."""
    return -(-n // _ALIGN) * _ALIGN


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


_ATTACHED: dict[str, SharedMemory] = {}


def _attach(name: str) -> SharedMemory:
    """This worker's handle on segment ``name``, opened once and kept for the worker's life.

    The consumer owns the segment (creates, registers and unlinks it). Python < 3.13 also
    registers an attachment with the resource tracker; our workers share the consumer's
    tracker (spawn, forkserver and loky all pass it on), where that is a no-op.
    """
    segment = _ATTACHED.get(name)
    if segment is None:
        try:
            segment = SharedMemory(name=name, track=False)  # type: ignore[call-arg]
        except TypeError:  # Python < 3.13
            segment = SharedMemory(name=name)
        _ATTACHED[name] = segment
    return segment


def close_attached() -> None:
    """Close this process's handles on the segments ``pack_batch`` attached to.

    A worker keeps them for its life; a process that packs batches itself (a test, a
    benchmark of the transport) calls this before the consumer closes the ring.
    """
    for segment in _ATTACHED.values():
        _unmap(segment)
    _ATTACHED.clear()


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
        return torch.from_numpy(_view(_attach(slot.name).buf, shape, np_dtype, slot.offset))

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
    target = np.ndarray(images.shape, images.dtype, buffer=_attach(slot.name).buf, offset=slot.offset)
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


def _unmap(segment: SharedMemory) -> None:
    """Close this process's handle on ``segment``, even while arrays still view its mapping."""
    try:
        segment.close()
    except BufferError:
        # Batches or frames the caller still holds are views of the mapping: leave it to them
        # (it is unmapped when the last one is garbage) and let go of the rest now.
        segment._buf = segment._mmap = None  # type: ignore[attr-defined]
        fd, segment._fd = getattr(segment, "_fd", -1), -1  # type: ignore[attr-defined]
        if fd >= 0:
            os.close(fd)


def _destroy(segment: SharedMemory) -> None:
    _unmap(segment)
    try:
        segment.unlink()
    except FileNotFoundError:
        pass


def _give_back(free: queue.SimpleQueue[int], tokens: queue.SimpleQueue[int], index: int) -> None:
    """A lent slot's tensor is gone: the slot and the lending token return (any thread, even in GC)."""
    free.put(index)
    tokens.put(index)


def _view(buffer: memoryview, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> np.ndarray:
    """An array over ``buffer`` that holds a buffer export on the mapping, so it cannot be unmapped under it.

    Not ``np.ndarray(buffer=...)``: that keeps a reference but no export, so closing the segment
    unmaps memory the array still points to (a segfault on the next read).
    """
    return np.frombuffer(buffer, dtype, count=math.prod(shape), offset=offset).reshape(shape)


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
        self.slot_bytes = _aligned(slot_bytes)
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
        need = _aligned(slot_bytes) * slots
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
        source = _view(self._buffer(), images.shape, out.dtype, images.offset)
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
            view = _view(self._buffer(), images.shape, np.dtype(images.dtype), images.offset)
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
