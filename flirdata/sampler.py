"""The batch sampler every backend shares: shuffle by (seed, epoch), shard, batch.

Backends only decide who fetches a batch; which samples form it is decided here, once,
so that every backend and worker count sees the same index lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flirdata.seeding import shuffle_seed_sequence

__all__ = ["BatchSampler"]

def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BatchSampler:
    """Index lists of one epoch: ``batches(epoch)[k]`` are the samples of batch ``k``.

    Every rank draws the same permutation of the whole dataset and keeps every
    ``world_size``-th index from ``rank`` on, so shards are disjoint and together cover the
    dataset exactly once. Shards are not padded with duplicates: ranks may differ by one
    sample, and with ``drop_last=False`` by one batch.

    Args:
        size: number of samples in the dataset.
        batch_size: samples per batch.
        shuffle: draw a new order every epoch from ``(seed, epoch)``.
        seed: seed of the order.
        drop_last: drop this rank's last batch when it is short.
        rank: this process's shard, ``0 <= rank < world_size``.
        world_size: number of shards (processes of a distributed run).
    """

    size: int
    batch_size: int = 1
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        _check_int("size", self.size, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("world_size", self.world_size, 1)
        if _check_int("rank", self.rank, 0) >= self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")

    @property
    def shard_size(self) -> int:
        """Samples in this rank's shard."""
        return len(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.shard_size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch``, in the order they are served."""
        if self.shuffle:
            indices = np.random.default_rng(shuffle_seed_sequence(self.seed, epoch)).permutation(self.size)
        else:
            _check_int("epoch", epoch, 0)
            indices = np.arange(self.size)
        return indices[self.rank :: self.world_size]

    def batches(self, epoch: int) -> list[tuple[int, ...]]:
        """The epoch's batches as tuples of sample indices (``len(self)`` of them)."""
        order = self.order(epoch).tolist()
        size = self.batch_size
        return [tuple(order[k : k + size]) for k in range(0, len(self) * size, size)]
