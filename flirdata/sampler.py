"""The batch sampler every backend shares: shuffle by (seed, epoch), shard, batch.

Backends only decide who fetches a batch; which samples form it is decided here, once,
so that every backend and worker count sees the same index lists. ``resolve_shard`` finds
this process's rank and world size (torch.distributed, else torchrun's environment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from flirdata._validate import check_int
from flirdata.seeding import shuffle_seed_sequence

__all__ = ["MAX_EPOCH", "BatchSampler", "resolve_shard"]

# Epochs are shared with workers as an int64 (``FlirDetection.set_epoch``); the seeding functions
# take any size, so int64 is the bound.
MAX_EPOCH = 2**63 - 1


def _check_shard(rank: object, world_size: object) -> tuple[int, int]:
    world_size = check_int("world_size", world_size, 1)
    rank = check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


def _env_int(name: str, minimum: int, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"environment variable {name} must be an integer >= {minimum}, got {text!r}")
    return value


def _distributed_shard() -> tuple[int, int] | None:
    """``(rank, world_size)`` of an initialised default process group, else None."""
    import torch.distributed as dist  # here, not at the top: importing flirdata stays torch-free

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def resolve_shard(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's ``(rank, world_size)``; explicit arguments win over what is found.

    A value left None comes from the initialised ``torch.distributed`` default group, else
    from the ``RANK``/``WORLD_SIZE`` environment variables (torchrun sets them), else 0 and 1.
    Call it in the main process: a worker has no process group and could read another shard.

    Raises:
        ValueError: a malformed ``RANK``/``WORLD_SIZE``, or a rank outside ``[0, world_size)``.
    """
    if rank is None or world_size is None:
        found = _distributed_shard()
        if found is None:
            found = (_env_int("RANK", 0, 0), _env_int("WORLD_SIZE", 1, 1))
            if rank is None and world_size is None and found[0] >= found[1]:
                raise ValueError(
                    f"environment variables RANK={found[0]} and WORLD_SIZE={found[1]}: RANK must be below WORLD_SIZE"
                )
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    return _check_shard(rank, world_size)


@dataclass(frozen=True)
class BatchSampler:
    """Index lists of one epoch: ``batches(epoch)[k]`` are the samples of batch ``k``.

    Every rank draws the same order of the whole dataset and keeps every ``world_size``-th
    index from ``rank`` on, as ``torch.utils.data.DistributedSampler`` does, so that every
    rank serves the same number of batches (DDP ranks that step a different number of times
    hang):

    * ``drop_last=False, pad=True`` (the default): the order is extended by its own head to
      ``ceil(size / world_size) * world_size`` samples; a few samples are served twice per
      epoch, on different ranks, and the last batch may be short (on every rank alike).
    * ``drop_last=True``: the order's tail is cut to ``floor(size / world_size) * world_size``
      samples and each rank's short last batch is dropped: no duplicates, a few samples
      skipped per epoch (others next epoch, when shuffled).
    * ``drop_last=False, pad=False``: shards are disjoint and cover the dataset exactly once,
      but ranks may differ by one sample and one batch: for one-pass jobs (export), not DDP.

    Args:
        size: number of samples in the dataset.
        batch_size: samples per batch.
        shuffle: draw a new order every epoch from ``(seed, epoch)``.
        seed: seed of the order.
        drop_last: cut the order to equal shards and drop the short last batch.
        rank: this process's shard, ``0 <= rank < world_size``.
        world_size: number of shards (processes of a distributed run).
        pad: with ``drop_last=False``, pad the order to equal shards.
    """

    size: int
    batch_size: int = 1
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    pad: bool = True

    def __post_init__(self) -> None:
        check_int("size", self.size, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0)
        _check_shard(self.rank, self.world_size)

    @property
    def total_size(self) -> int:
        """Samples of one epoch over all ranks, after padding or cutting."""
        if self.drop_last:
            return self.size // self.world_size * self.world_size
        if self.pad:
            return -(-self.size // self.world_size) * self.world_size
        return self.size

    @property
    def shard_size(self) -> int:
        """Samples in this rank's shard."""
        return len(range(self.rank, self.total_size, self.world_size))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.shard_size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch``, in the order they are served."""
        epoch = check_int("epoch", epoch, 0, MAX_EPOCH)
        if self.shuffle:
            indices = np.random.default_rng(shuffle_seed_sequence(self.seed, epoch)).permutation(self.size)
        else:
            indices = np.arange(self.size)
        # np.resize repeats the order cyclically: its head pads it, as DistributedSampler's does.
        indices = np.resize(indices, self.total_size)
        return indices[self.rank :: self.world_size]

    def batches(self, epoch: int) -> list[tuple[int, ...]]:
        """The epoch's batches as tuples of sample indices (``len(self)`` of them)."""
        order = self.order(epoch).tolist()
        size = self.batch_size
        return [tuple(order[k : k + size]) for k in range(0, len(self) * size, size)]
