"""The loader contract, run over every backend and worker count on the real dataset.

``check_backend`` (in ``support.py``) is the one contract: same batches (image bytes, boxes, labels, ids) as
"sequential" for the same seed and epoch, in the same order and number; epochs differ;
shuffle, drop_last and shards honoured; and it starts with a pickle round trip.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import (
    ProbeDataset,
    ToyDataset,
    assert_same_batch,
    backend_params,
    check_backend,
    reference,
    run_epochs,
    use_shared_ray_for,
)

from flirdata import FlirDetection, _segments, build_transform
from flirdata.backends import BACKENDS, Fetcher, WorkerCrashError
from flirdata.backends import _shm as shm_module
from flirdata.backends._pool import LENT_BATCHES, PoolBackend
from flirdata.backends._shm import SharedRing, ShmCapacityWarning, Slot
from flirdata.backends._wire import PackedBatch, RemoteFailure, Shipment, ShmImages, dumps
from flirdata.collate import batch_memory, collate_detection
from flirdata.loader import LoaderOptions, make_loader

PARALLEL = ("dataloader", "loky", "process", "threads")
PROCESS_POOLS = ("loky", "process")  # the backends with a shared-memory ring


@pytest.fixture(scope="module")
def flir(synth_root: Path) -> FlirDetection:
    return FlirDetection(synth_root, "train", transform=build_transform("thermal"), seed=0)


def _contract_params() -> list[Any]:
    """(backend, workers) over the registry; the quick tier runs those that stay in this process."""
    quick = {("sequential", 1), ("threads", 2), ("threads", 3)}  # 1 worker: sequential, whatever the backend
    slow = pytest.mark.slow
    return [pytest.param(b, w, marks=() if (b, w) in quick else slow) for b in sorted(BACKENDS) for w in (1, 2, 3)]


@pytest.mark.filterwarnings("ignore::flirdata.loader.WorkerCountWarning")  # 3 workers on a 2-core machine
@pytest.mark.parametrize(("backend", "workers"), _contract_params())
def test_contract(flir: FlirDetection, backend: str, workers: int, request: pytest.FixtureRequest) -> None:
    use_shared_ray_for(backend, request)
    loader = check_backend(flir, backend, workers)
    assert loader.backend is None  # closed


@pytest.mark.parametrize("backend", backend_params(PARALLEL))
def test_contract_drop_last_and_shard(flir: FlirDetection, backend: str) -> None:
    check_backend(flir, backend, 2, epochs=(3, 4), drop_last=True, rank=1, world_size=2, seed=5)


def test_shards_cover_the_dataset_once(flir: FlirDetection) -> None:
    ids = []
    for rank in range(3):
        loader = make_loader(flir, batch_size=4, shuffle=True, seed=1, rank=rank, world_size=3)
        loader.set_epoch(2)
        ids.append([t["image_id"] for _, targets in loader for t in targets])
    assert sorted(i for shard in ids for i in shard) == sorted(int(i) for i in flir.index.image_ids)


def test_no_shuffle_keeps_dataset_order(flir: FlirDetection) -> None:
    loader = make_loader(flir, batch_size=7)
    assert [t["image_id"] for _, targets in loader for t in targets] == [int(i) for i in flir.index.image_ids]
    assert [len(targets) for _, targets in loader] == [7, 7, 7, 3]
    assert len(make_loader(flir, batch_size=7, drop_last=True)) == 3


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'; expected one of \['dataloader', 'loky'"):
        make_loader(ToyDataset(), backend="gpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": -1}, "workers must be an integer >= 0, got -1"),
        ({"prefetch": 0}, "prefetch must be an integer >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"rank": 3, "world_size": 2}, r"rank must be in \[0, world_size=2\)"),
        ({"collate_fn": None}, "collate_fn must be callable"),
    ],
)
def test_invalid_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_loader(ToyDataset(), **kwargs)


def test_set_epoch_validates() -> None:
    loader = make_loader(ToyDataset())
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -2"):
        loader.set_epoch(-2)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_one_worker_runs_in_the_calling_thread(backend: str) -> None:
    dataset = ProbeDataset(size=6)
    with make_loader(dataset, backend=backend, workers=1, batch_size=4) as loader:
        assert loader.options.effective_backend == "sequential"
        pids = {t["pid"] for _, targets in loader for t in targets}
        assert loader.backend is not None and loader.backend.name == "sequential"
    assert pids == {os.getpid()}


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ("dataloader", "loky", "process"))
def test_workers_are_set_up_once_and_persist(backend: str) -> None:
    with make_loader(ProbeDataset(size=24), backend=backend, workers=2, batch_size=3) as loader:
        seen = run_epochs(loader, (0, 1, 2))
    targets = [t for batches in seen.values() for _, ts in batches for t in ts]
    assert {t["unpickles"] for t in targets} == {1}  # once per worker, not per task, not per epoch
    assert len({t["pid"] for t in targets} - {os.getpid()}) <= 2
    assert {(t["cv2"], t["torch"], t["omp"]) for t in targets} == {(1, 1, "1")}


@pytest.mark.parametrize("backend", backend_params(("dataloader", "process", "threads")))  # loky: as process
def test_prefetch_is_bounded(backend: str, tmp_path: Path) -> None:
    workers, prefetch, batch = 2, 2, 2
    window = workers * prefetch * batch  # samples in flight while the consumer holds its batch
    dataset = ToyDataset(size=60, log_dir=tmp_path)
    options = {"workers": workers, "batch_size": batch, "prefetch": prefetch}
    with make_loader(dataset, backend=backend, **options) as loader:
        batches = iter(loader)
        next(batches)
        start = time.monotonic()
        while len(list(tmp_path.iterdir())) < window:  # workers run ahead of the consumer, by the window
            time.sleep(0.01)
        # A slow consumer: as long again as the window took to fill, and the workers wait for it.
        time.sleep(max(0.5, 2 * (time.monotonic() - start)))
        fetched = len(list(tmp_path.iterdir()))
        batches.close()
    assert window <= fetched <= window + batch  # the window, and the one batch the consumer took


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", PROCESS_POOLS)
def test_images_travel_through_the_ring_and_stay_valid(backend: str) -> None:
    dataset = ToyDataset(size=40)
    with make_loader(dataset, backend=backend, workers=2, batch_size=4) as loader:
        kept = list(loader) + list(loader)  # slots are reused many times over
        ring = loader.backend.ring if isinstance(loader.backend, PoolBackend) else None
        assert ring is not None and ring.slots == 4 + LENT_BATCHES  # the window's 2 x 2 and the lent ones
        assert ring.name.startswith(f"{shm_module.SEGMENT_PREFIX}{os.getpid()}-")
    expected = reference(dataset, (0,), batch_size=4)[0] * 2
    for batch, want in zip(kept, expected, strict=True):
        assert_same_batch(batch, want)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_batches_too_big_for_a_slot_are_pickled() -> None:
    # PoolBackend code, shared by "loky"; the forkserver-based "process" starts faster.
    dataset = ToyDataset(size=24, grow=True)  # every batch is bigger than the first
    check_backend(dataset, "process", 2, epochs=(0,), batch_size=4, shuffle=False)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_small_dev_shm_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shm_module, "shm_free_bytes", lambda: 1 << 10)
    monkeypatch.setattr(shm_module, "_warned", False)
    with pytest.warns(ShmCapacityWarning, match="--shm-size") as caught:
        check_backend(ToyDataset(size=20), "process", 2, epochs=(0, 1), batch_size=4)
        check_backend(ToyDataset(size=20), "process", 2, epochs=(0,), batch_size=4)
    assert len(caught) == 1


def test_ring_round_trip_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_segments, "_ATTACHED", {})
    ring = SharedRing(slot_bytes=1000, slots=2)
    try:
        images = torch.arange(2 * 3 * 50, dtype=torch.int16).reshape(2, 3, 50)
        slot = ring.acquire()
        packed = shm_module.pack_batch((images, ["t0", "t1"]), slot)
        assert isinstance(packed, PackedBatch) and packed.images is not None
        out = shm_module.unpack_batch(packed, ring)
        ring.release(slot.index)
        assert torch.equal(out[0], images) and out[1] == ["t0", "t1"]
        for batch in ((torch.zeros(2000, dtype=torch.uint8), []), ["not", "a", "tuple"]):  # pickled whole
            packed = shm_module.pack_batch(batch, ring.acquire())
            assert isinstance(packed, PackedBatch) and packed.images is None
            assert str(shm_module.unpack_batch(packed, ring)) == str(batch)
        unpicklable = (images, lambda: None)  # the pool's own pickler gets to try
        assert shm_module.pack_batch(unpicklable, slot) is unpicklable
    finally:
        for segment in _segments._ATTACHED.values():
            segment.close()
        ring.close()
    assert not Path(f"/dev/shm/{ring.name}").exists()


def _in_segment(tensor: torch.Tensor, ring: SharedRing, mapping: Any = None) -> bool:
    """Whether ``tensor`` lies in the ring's segment, as this process maps it (the ring's or a worker's map)."""
    start = np.frombuffer((mapping or ring._segment).buf, np.uint8).ctypes.data
    return start <= tensor.data_ptr() < start + ring.slot_bytes * ring.slots


def test_ring_lends_slots_and_takes_them_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_segments, "_ATTACHED", {})
    unraisable: list[Any] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    samples = [(torch.full((1, 4, 5), i, dtype=torch.uint8), {"i": i}) for i in range(3)]
    ring = SharedRing(slot_bytes=64, slots=3, lend=1)
    try:
        slot = ring.acquire()
        with batch_memory(shm_module.slot_allocator(slot)):  # as a worker collates: into the slot itself
            batch = collate_detection(samples)
        assert _in_segment(batch[0], ring, _segments._ATTACHED[ring.name])  # the worker's own map of it
        lent = shm_module.unpack_batch(shm_module.pack_batch(batch, slot), ring, slot)
        assert _in_segment(lent[0], ring) and ring.lent == 1  # no copy: the batch is the slot
        assert torch.equal(lent[0], torch.stack([image for image, _ in samples])) and lent[1][2] == {"i": 2}
        slot2 = ring.acquire()
        copied = shm_module.unpack_batch(shm_module.pack_batch(batch, slot2), ring, slot2)
        assert not _in_segment(copied[0], ring) and torch.equal(copied[0], lent[0])  # no token left: a copy
        assert {ring.acquire().index, ring.acquire().index} == {0, 1, 2} - {slot.index}  # slot2 came back at once
        view = lent[0][1:]  # a view keeps the slot lent after the batch itself is gone
        del lent, batch
        assert ring.lent == 1
        ring.close()  # closing the loader while the user still holds a batch
        assert not Path(f"/dev/shm/{ring.name}").exists()
        assert view.sum().item() == 4 * 5 * (1 + 2)  # still the batch's bytes
        del view
        assert ring.lent == 0 and ring.acquire().index == slot.index
    finally:
        shm_module.close_attached()
        ring.close()
    assert unraisable == []  # no "Exception ignored" from a segment closed under a live view


def test_slot_memory_serves_one_batch_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_segments, "_ATTACHED", {})
    ring = SharedRing(slot_bytes=64, slots=2)
    try:
        with batch_memory(shm_module.slot_allocator(ring.acquire())):  # a collate that stacks twice
            first = collate_detection([(torch.ones(1, 2, 2, dtype=torch.uint8), {})])
            second = collate_detection([(torch.full((1, 2, 2), 2, dtype=torch.uint8), {})])
        assert first[0].unique().tolist() == [1] and second[0].unique().tolist() == [2]
        del first, second
    finally:
        shm_module.close_attached()
        ring.close()


def stack_in_halves(samples: list[Any]) -> tuple[torch.Tensor, list[Any]]:
    """A user's collate that calls ``collate_detection`` twice and joins the halves."""
    head, tail = collate_detection(samples[:1]), collate_detection(samples[1:])
    return torch.cat([head[0], tail[0]]), head[1] + tail[1]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_users_collate_that_stacks_twice_gets_its_own_bytes() -> None:
    check_backend(ToyDataset(size=20), "process", 2, epochs=(0,), batch_size=4, collate_fn=stack_in_halves)


def test_ring_refuses_to_lend_every_slot() -> None:
    with pytest.raises(ValueError, match=r"lend must be in \[0, slots\), got lend=2 for 2 slots"):
        SharedRing(slot_bytes=64, slots=2, lend=2)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_consumer_is_handed_the_ring_slots() -> None:
    dataset = ToyDataset(size=40)
    expected = reference(dataset, (0,), batch_size=4)[0]
    with make_loader(dataset, backend="process", workers=2, batch_size=4) as loader:
        got, lent = [], 0
        for batch in loader:  # a consumer that lets each batch go: every batch after the first is lent
            ring = loader.backend.ring if isinstance(loader.backend, PoolBackend) else None
            lent += ring is not None and _in_segment(batch[0], ring)
            got.append((batch[0].clone(), batch[1]))
        del batch
        assert ring is not None and ring.lent == 0  # all given back
    assert lent == len(expected) - 2 * 2  # all but the first window (2 workers x 2), sent before the ring exists
    for batch, want in zip(got, expected, strict=True):
        assert_same_batch(batch, want)


def test_batch_payload_keeps_tensors_as_tensors() -> None:
    targets = [
        {
            "boxes": torch.rand(3, 4)[:, :2],
            "labels": torch.arange(3),
            "half": torch.ones(2).half(),
            "bf16": torch.ones(2, dtype=torch.bfloat16),
            "grad": torch.ones(2, requires_grad=True),
        }
    ]
    out = pickle.loads(dumps(targets))[0]
    for key, value in targets[0].items():
        assert type(out[key]) is torch.Tensor and out[key].dtype == value.dtype
        assert torch.equal(out[key].detach(), value.detach())
    out["labels"] += 1  # a writable copy of its own


def test_loader_pickles_its_configuration_not_its_pool() -> None:
    dataset = ToyDataset(size=12)
    with make_loader(dataset, backend="threads", workers=2, batch_size=4, shuffle=True, seed=3) as loader:
        loader.set_epoch(2)
        first = list(loader)
        assert loader.backend is not None
        clone = pickle.loads(pickle.dumps(loader))
    assert clone.backend is None and clone.epoch == 2 and clone.options == loader.options
    assert clone.sampler == loader.sampler and len(clone) == len(loader) == 3
    with clone:
        for batch, want in zip(list(clone), first, strict=True):
            assert_same_batch(batch, want)


def test_everything_sent_to_workers_pickles() -> None:
    dataset = ToyDataset(size=8)
    fetcher = pickle.loads(pickle.dumps(Fetcher(dataset, make_loader(dataset).options.collate_fn)))
    assert_same_batch(fetcher((1, (3, 4))), Fetcher(dataset, fetcher.collate_fn)((1, (3, 4))))
    things = [
        LoaderOptions(backend="loky", workers=3),
        make_loader(dataset).tasks(),
        Slot("flirdata-1-ab", 2, 128, 64),
        PackedBatch(ShmImages(0, (1, 2), "|u1"), pickle.dumps(({"a": 1},))),
    ]
    for thing in things:
        assert pickle.loads(pickle.dumps(thing)) == thing
    shipment = pickle.loads(pickle.dumps(Shipment.pack((torch.ones(2, 3), [{"image_id": 4}]))))
    assert torch.equal(shipment.unpack()[0], torch.ones(2, 3)) and shipment.unpack()[1] == [{"image_id": 4}]
    failure = pickle.loads(pickle.dumps(RemoteFailure.capture(ValueError("x"))))
    assert type(failure.exc) is ValueError and failure.exc.args == ("x",) and "ValueError: x" in failure.tb
    crash = pickle.loads(pickle.dumps(WorkerCrashError("loky", [12, 7])))
    assert crash.backend == "loky" and crash.pids == (7, 12) and "pid 7, 12" in str(crash)
