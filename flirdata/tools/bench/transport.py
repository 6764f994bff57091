"""The cost of moving a batch from a worker to the consumer, by the paths flirdata has and had.

``transport_costs`` times, per image, making a batch from samples in a sender thread and handing it
to the consumer through a pipe: collated into a ring slot and the slot lent (the path in use),
against the copy in and out of the ring it replaced and against pickling the whole batch, with
each copy apart. ``benchmarks/bench_backends.py`` reports it; it lives in the package because it
drives the ring's internals (``flirdata.backends._shm``), which the script does not reach into.
"""

from __future__ import annotations

import multiprocessing
import pickle
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from flirdata._segments import close_attached
from flirdata.backends._shm import SharedRing, Slot, pack_batch, slot_allocator, unpack_batch
from flirdata.backends._wire import dumps
from flirdata.collate import batch_memory, collate_detection

__all__ = ["transport_costs"]


def transport_costs(batch: int = 32, repeats: int = 30) -> dict[str, float]:
    """µs per 512x640 image to make a batch from samples in a sender thread and hand it to the consumer.

    Sender: collate the samples and pack the batch (images into a ring slot, or everything
    pickled), pickle, write to a pipe; consumer: read, unpickle, unpack, let the batch go. Two
    threads of one process stand in for worker and consumer; the pipe and copies are the same as
    between processes. The path in use collates straight into the slot and lends the slot to the
    consumer; the one before it collated into fresh memory, copied that into the slot, and the
    consumer copied it out again.
    """
    images = torch.randint(0, 256, (batch, 1, 512, 640), dtype=torch.uint8)
    targets = [{"boxes": torch.rand(5, 4), "labels": torch.arange(5), "image_id": k} for k in range(batch)]
    samples = list(zip(images, targets, strict=True))
    ring = SharedRing(images.nbytes, 2, lend=1)
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:

        def send(slot: Slot | None, into_slot: bool) -> None:
            if into_slot and slot is not None:
                with batch_memory(slot_allocator(slot)):
                    batch = collate_detection(samples)
            else:
                batch = collate_detection(samples)
            writer.send_bytes(pickle.dumps(pack_batch(batch, slot)))

        def through_pipe(way: str) -> None:
            slot = None if way == "pickled" else ring.acquire()
            sender = threading.Thread(target=send, args=(slot, way == "lent"))
            sender.start()
            packed = pickle.loads(reader.recv_bytes())
            if way == "lent":
                unpack_batch(packed, ring, slot)  # lent, then let go: the slot returns
            else:
                unpack_batch(packed, ring)  # copied out
                if slot is not None:
                    ring.release(slot.index)
            sender.join()

        slot = ring.acquire()
        packed = pack_batch(collate_detection(samples), slot)
        ways = {
            "collated into the ring slot, lent to the consumer (used)": partial(through_pipe, "lent"),
            "collated, copied into the ring, copied out (before)": partial(through_pipe, "copied"),
            "collated, pickled through the pipe (the fallback)": partial(through_pipe, "pickled"),
            "collate alone (the stack of the images)": partial(collate_detection, samples),
            "a copy into the ring alone (saved by collating into it)": partial(pack_batch, (images, targets), slot),
            "a copy out of the ring alone (saved by lending the slot)": partial(ring.read, packed.images),
            "targets only, tensors pickled as numpy arrays (used)": lambda: pickle.loads(dumps(targets)),
            "targets only, torch's own tensor pickling": lambda: pickle.loads(pickle.dumps(targets)),
        }
        ring.release(slot.index)
        out = {name: _per_image_us(fn, repeats, batch) for name, fn in ways.items()}
    finally:
        reader.close()
        writer.close()
        close_attached()  # the sender thread attached to the ring as a worker would
        ring.close()
    return out


def _per_image_us(fn: Callable[[], Any], repeats: int, batch: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch * 1e6
