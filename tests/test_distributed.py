"""Distributed training: where the rank comes from, equal shards, and a real torchrun of the demo.

DDP ranks that step a different number of times hang, so every rank must serve the same
number of batches: the sampler pads like ``DistributedSampler`` (or cuts, with ``drop_last``),
while export keeps disjoint, unpadded shards.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from flirdata import FlirDetection, build_transform
from flirdata.loader import make_loader
from flirdata.sampler import BatchSampler, resolve_shard
from flirdata.tools.export import export_augmented

SCRIPT = Path(__file__).resolve().parents[1] / "train_demo.py"
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Sized:
    """A dataset of ``n`` ints, enough for a loader's sampler."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def process_group() -> Iterator[None]:
    """A one-process gloo group, as ``init_process_group`` leaves it in a DDP script."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(loader_or_sampler: object) -> tuple[int, int]:
    options = getattr(loader_or_sampler, "options", loader_or_sampler)
    return options.batching.rank, options.batching.world_size


def flat(batches: list[tuple[int, ...]]) -> list[int]:
    return [i for batch in batches for i in batch]


# -- where rank and world_size come from --------------------------------------------------------
def test_torchrun_environment_shards_the_loader(no_torchrun: pytest.MonkeyPatch) -> None:
    assert resolve_shard() == shard(make_loader(Sized(9))) == (0, 1)  # no torchrun: everything
    no_torchrun.setenv("RANK", "1")
    no_torchrun.setenv("WORLD_SIZE", "2")
    loader = make_loader(Sized(9), batch_size=4)
    assert shard(loader) == (1, 2)
    assert len(loader) == 2 and loader.tasks(0) == [(0, (1, 3, 5, 7)), (0, (0,))]  # padded by sample 0
    # Resolved once, in this process: a pickled loader keeps its shard whatever its new home says.
    no_torchrun.setenv("RANK", "0")
    assert shard(pickle.loads(pickle.dumps(loader))) == (1, 2)


def test_explicit_arguments_win(no_torchrun: pytest.MonkeyPatch) -> None:
    no_torchrun.setenv("RANK", "1")
    no_torchrun.setenv("WORLD_SIZE", "2")
    assert shard(make_loader(Sized(9), rank=0, world_size=1)) == (0, 1)
    assert shard(make_loader(Sized(9), rank=2, world_size=3)) == (2, 3)
    assert shard(make_loader(Sized(9), world_size=4)) == (1, 4)  # the one left None comes from RANK


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RANK": "one"}, "environment variable RANK must be an integer >= 0, got 'one'"),
        ({"RANK": "-1"}, "environment variable RANK must be an integer >= 0, got '-1'"),
        ({"WORLD_SIZE": "0"}, "environment variable WORLD_SIZE must be an integer >= 1, got '0'"),
        ({"WORLD_SIZE": ""}, "environment variable WORLD_SIZE must be an integer >= 1, got ''"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 and WORLD_SIZE=2: RANK must be below WORLD_SIZE"),
    ],
)
def test_bad_environment_names_the_variable(no_torchrun: pytest.MonkeyPatch, env: dict, match: str) -> None:
    for name, value in env.items():
        no_torchrun.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        make_loader(Sized(9))


def test_an_initialised_process_group_wins_over_the_environment(
    no_torchrun: pytest.MonkeyPatch, process_group: None
) -> None:
    no_torchrun.setenv("RANK", "three")  # not even read: the group knows better
    no_torchrun.setenv("WORLD_SIZE", "4")
    assert resolve_shard() == (dist.get_rank(), dist.get_world_size()) == (0, 1)
    assert shard(make_loader(Sized(9), batch_size=4)) == (0, 1)
    assert shard(make_loader(Sized(9), rank=1, world_size=2)) == (1, 2)


SHARD_IN_GROUP = """
import sys
import torch.distributed as dist
from flirdata.loader import make_loader
dist.init_process_group("gloo", init_method=sys.argv[1], rank=int(sys.argv[2]), world_size=2)
loader = make_loader(list(range(9)), batch_size=4)
print(loader.sampler.rank, loader.sampler.world_size, len(loader))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_each_process_of_a_group_gets_its_own_shard() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**{k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}, "RANK": "0", "WORLD_SIZE": "1"}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", SHARD_IN_GROUP, address, str(rank)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [process.communicate() for process in ranks]  # (the hang guard bounds them)
    finally:
        for process in ranks:
            process.kill()  # a no-op once it has exited; a rank stuck waiting for the other must not linger
    assert all(process.returncode == 0 for process in ranks), outputs
    # The group, not RANK/WORLD_SIZE=0/1: 9 samples padded to 10, 2 batches of 4 + 1 on each rank.
    assert [out.split() for out, _ in outputs] == [["0", "2", "2"], ["1", "2", "2"]]


# -- equal shards ---------------------------------------------------------------------------------
@given(
    size=st.integers(0, 150),
    batch_size=st.integers(1, 13),
    world_size=st.integers(1, 6),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
)
def test_every_rank_serves_the_same_number_of_batches(
    size: int, batch_size: int, world_size: int, drop_last: bool, shuffle: bool
) -> None:
    samplers = [BatchSampler(size, batch_size, shuffle, 3, drop_last, rank, world_size) for rank in range(world_size)]
    shards = [sampler.batches(1) for sampler in samplers]
    assert {len(batches) for batches in shards} == {len(samplers[0])}
    per_rank = size // world_size if drop_last else -(-size // world_size)
    for batches in shards:
        assert len(flat(batches)) == (per_rank // batch_size * batch_size if drop_last else per_rank)
        assert all(len(b) == batch_size for b in (batches if drop_last else batches[:-1]))


@given(size=st.integers(0, 60), world_size=st.integers(1, 7), drop_last=st.booleans(), epoch=st.integers(0, 3))
def test_shards_are_those_of_distributed_sampler(size: int, world_size: int, drop_last: bool, epoch: int) -> None:
    samples = list(range(size))
    permutation = BatchSampler(size, shuffle=True, seed=5).order(epoch)  # the whole shuffled order
    for rank in range(world_size):
        torch_shard = list(DistributedSampler(samples, world_size, rank, shuffle=False, drop_last=drop_last))
        ours = BatchSampler(size, 1, False, 0, drop_last, rank, world_size)
        assert ours.order(epoch).tolist() == torch_shard
        # Shuffled: the same positions of the shuffled order, so it repeats (or skips) the same way.
        shuffled = BatchSampler(size, 1, True, 5, drop_last, rank, world_size).order(epoch)
        assert shuffled.tolist() == permutation[torch_shard].tolist()


@given(size=st.integers(1, 60), world_size=st.integers(1, 7), shuffle=st.booleans())
def test_padding_covers_the_dataset_and_repeats_only_its_head(size: int, world_size: int, shuffle: bool) -> None:
    served = [BatchSampler(size, 4, shuffle, 1, False, rank, world_size).order(2) for rank in range(world_size)]
    everything = np.concatenate(served)
    assert sorted(set(everything.tolist())) == list(range(size))
    extra = len(everything) - size
    assert extra == -size % world_size  # up to the next multiple of world_size
    head = BatchSampler(size, shuffle=shuffle, seed=1).order(2)[: min(extra, size)]
    repeated = [i for i, count in zip(*np.unique(everything, return_counts=True), strict=True) if count > 1]
    assert sorted(repeated) == sorted(set(head.tolist()))


@given(size=st.integers(0, 80), batch_size=st.integers(1, 9), world_size=st.integers(1, 5))
def test_unpadded_shards_are_disjoint(size: int, batch_size: int, world_size: int) -> None:
    served = [
        flat(BatchSampler(size, batch_size, True, 2, False, rank, world_size, pad=False).batches(0))
        for rank in range(world_size)
    ]
    assert sorted(i for shard in served for i in shard) == list(range(size))


@pytest.mark.timeout(120)
def test_torchrun_environment_shards_training_but_not_export(
    no_torchrun: pytest.MonkeyPatch, synth_root: Path, tmp_path: Path
) -> None:
    no_torchrun.setenv("RANK", "1")
    no_torchrun.setenv("WORLD_SIZE", "2")
    dataset = FlirDetection(synth_root, transform=build_transform("thermal"), seed=0)
    assert [len(b) for _, b in make_loader(dataset, batch_size=5).tasks()] == [5, 5, 2]  # this rank's 12 of 24
    summary = export_augmented(dataset, tmp_path / "out", batch_size=5, progress=False)
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert summary.images == len(coco["images"]) == len(dataset)
    assert sorted(im["extra_info"]["source_image_id"] for im in coco["images"]) == sorted(
        int(i) for i in dataset.index.image_ids
    )


# -- a real torchrun ------------------------------------------------------------------------------
TORCH_ABORT = "terminate called without an active exception"


def torchrun(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 train_demo.py --distributed ARGS`` with this interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["FLIRDATA_CACHE"] = str(cache)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(SCRIPT),
        "--distributed",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 and TORCH_ABORT in done.stderr and "(SIGABRT)" in done.stderr:
        # A rank killed by an abort in torch's C++ threads (seen in 2 of 5 full-suite runs, never in 13
        # runs of this command alone, under load or not; before any Python error): run it once more,
        # and say so (in the test's captured output). Any other failure, or a second abort, fails the test.
        print(f"torchrun: a rank aborted in torch ({TORCH_ABORT!r}); running it once more", file=sys.stderr)
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    return done


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("backend", "workers"), [("sequential", 1), ("process", 2)])
def test_torchrun_trains_on_equal_disjoint_shards(tmp_path: Path, backend: str, workers: int) -> None:
    # 21 images, 2 ranks: drop_last cuts each shard to 10, i.e. 2 batches of 4; rank 0 writes the
    # synthetic dataset while rank 1 waits for it.
    done = torchrun(
        "--size",
        "21",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--backend",
        backend,
        "--workers",
        str(workers),
        "--record",
        str(tmp_path / "record"),
        cache=tmp_path / "cache",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads((tmp_path / "record" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["steps"] for r in records] == [4, 4] and all(r["world_size"] == 2 for r in records)
    dataset = FlirDetection(tmp_path / "cache" / "synth-21-seed0", seed=0)
    ids = dataset.index.image_ids
    for rank, record in enumerate(records):
        sampler = BatchSampler(21, 4, True, 0, True, rank, 2)
        assert record["image_ids"] == [[int(ids[i]) for i in b] for epoch in (0, 1) for b in sampler.batches(epoch)]
    for epoch in (slice(0, 2), slice(2, 4)):
        shards = [{i for step in r["image_ids"][epoch] for i in step} for r in records]
        assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 8
    # The logged loss is the all-reduced mean: the same on both ranks, from different local losses.
    assert records[0]["losses"] == records[1]["losses"]
    assert records[0]["local_losses"] != records[1]["local_losses"]
    means = [(a + b) / 2 for a, b in zip(records[0]["local_losses"], records[1]["local_losses"], strict=True)]
    assert records[0]["losses"] == pytest.approx(means, rel=1e-12)
    out = done.stdout
    assert out.count("training TinyDetector on 21 images") == 1  # rank 0 speaks for the job
    assert f"loader    : {backend}" in out and "the mean over 2 ranks (all-reduced)" in out
    assert "per rank  : rank 0: " in out and ", rank 1: " in out and "each 4 steps" in out
    assert "all ranks : " in out and "32 images on 2 ranks" in out
