"""The batch sampler shared by every backend: order, shuffle, drop_last, shards."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flirdata.sampler import BatchSampler
from flirdata.seeding import shuffle_seed_sequence


def flat(batches: list[tuple[int, ...]]) -> list[int]:
    return [i for batch in batches for i in batch]


def test_sequential_order_and_short_last_batch() -> None:
    sampler = BatchSampler(10, batch_size=4)
    assert sampler.batches(0) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert len(sampler) == 3
    assert sampler.batches(5) == sampler.batches(0)  # no shuffle: epochs do not matter


def test_drop_last_drops_only_the_short_batch() -> None:
    sampler = BatchSampler(10, batch_size=4, drop_last=True)
    assert sampler.batches(0) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert len(sampler) == 2
    assert len(BatchSampler(8, batch_size=4, drop_last=True)) == 2


def test_shuffle_is_a_function_of_seed_and_epoch() -> None:
    sampler = BatchSampler(100, batch_size=7, shuffle=True, seed=3)
    assert sampler.batches(1) == BatchSampler(100, batch_size=7, shuffle=True, seed=3).batches(1)
    assert sampler.batches(1) != sampler.batches(2)
    assert sampler.batches(1) != BatchSampler(100, batch_size=7, shuffle=True, seed=4).batches(1)
    assert sorted(flat(sampler.batches(1))) == list(range(100))


def test_seed_sequence_is_independent_of_the_sample_streams() -> None:
    from flirdata.seeding import sample_seed_sequence

    shuffle = shuffle_seed_sequence(0, 0).generate_state(4).tolist()
    assert all(shuffle != sample_seed_sequence(0, 0, i).generate_state(4).tolist() for i in range(50))


@given(
    size=st.integers(0, 200),
    batch_size=st.integers(1, 17),
    world_size=st.integers(1, 5),
    shuffle=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_unpadded_shards_are_disjoint_and_cover_the_dataset(
    size: int, batch_size: int, world_size: int, shuffle: bool, epoch: int
) -> None:
    # pad=False: one pass over the data (export); the padded default is in test_distributed.py.
    shards = [
        BatchSampler(size, batch_size, shuffle, 7, False, rank, world_size, pad=False).batches(epoch)
        for rank in range(world_size)
    ]
    served = [flat(batches) for batches in shards]
    assert sorted(i for shard in served for i in shard) == list(range(size))  # no duplicates, no gaps
    assert max(map(len, served)) - min(map(len, served)) <= 1  # balanced, without padding
    for rank, batches in enumerate(shards):
        sampler = BatchSampler(size, batch_size, shuffle, 7, False, rank, world_size, pad=False)
        assert len(batches) == len(sampler)
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert all(len(b) == batch_size for b in batches[:-1])


@given(size=st.integers(0, 100), batch_size=st.integers(1, 9), world_size=st.integers(1, 4))
def test_drop_last_keeps_only_full_batches(size: int, batch_size: int, world_size: int) -> None:
    for rank in range(world_size):
        sampler = BatchSampler(size, batch_size, True, 0, True, rank, world_size)
        batches = sampler.batches(0)
        assert len(batches) == len(sampler) == sampler.shard_size // batch_size
        assert all(len(b) == batch_size for b in batches)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": -1}, "size must be an integer >= 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        ({"seed": -3}, "seed must be an integer >= 0"),
        ({"world_size": 0}, "world_size must be an integer >= 1"),
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, world_size=2\), got 2"),
        ({"rank": True}, "rank must be an integer >= 0, got True"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchSampler(**{"size": 10, **kwargs})


def test_invalid_epoch() -> None:
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        BatchSampler(10, shuffle=True).batches(-1)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        BatchSampler(10).batches(-1)


def test_pickle_round_trip() -> None:
    sampler = BatchSampler(50, batch_size=6, shuffle=True, seed=9, drop_last=True, rank=1, world_size=3)
    clone = pickle.loads(pickle.dumps(sampler))
    assert clone == sampler
    assert clone.batches(4) == sampler.batches(4)
