"""The one place randomness comes from: a pure function of (seed, epoch, index).

albumentations 2.0.8 has two traps this module avoids:

* every worker process inherits one copy of a pipeline's RNG state, so without reseeding
  all workers draw the same augmentations (its fix, after 2.0.8, covers torch workers only);
* ``Compose(seed=s)`` and ``Compose.set_random_seed(s)`` give every child transform a
  generator seeded with the *same* ``s``, so the children's coin flips are perfectly
  correlated (three ``p=0.5`` flips fire all together or not at all).

``reseed_transform`` instead spawns one independent stream per node of the pipeline tree
from a ``numpy.random.SeedSequence`` keyed by (seed, epoch, index).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["sample_seed_sequence", "shuffle_seed_sequence", "iter_random_nodes", "reseed_transform"]

# Keep flirdata's streams apart from each other and from other users of SeedSequence([seed, ...]).
_DOMAIN = 0x466C6972  # "Flir": per-sample augmentation
_SHUFFLE_DOMAIN = 0x53687566  # "Shuf": an epoch's sample order


def _check_non_negative(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def sample_seed_sequence(seed: int, epoch: int, index: int) -> np.random.SeedSequence:
    """The seed of one sample's augmentation: same arguments, same stream, in any process.

    Exported copy ``k`` of an image is its augmentation in epoch ``k``.
    """
    key = [
        _DOMAIN,
        _check_non_negative("seed", seed),
        _check_non_negative("epoch", epoch),
        _check_non_negative("index", index),
    ]
    return np.random.SeedSequence(key)


def shuffle_seed_sequence(seed: int, epoch: int) -> np.random.SeedSequence:
    """The seed of an epoch's sample order: same (seed, epoch), same order, on every rank."""
    return np.random.SeedSequence(
        [_SHUFFLE_DOMAIN, _check_non_negative("seed", seed), _check_non_negative("epoch", epoch)]
    )


def iter_random_nodes(transform: Any) -> Iterator[Any]:
    """Every node of a pipeline tree that holds an RNG, depth first, in a fixed order."""
    if hasattr(transform, "random_generator") and hasattr(transform, "py_random"):
        yield transform
    for child in getattr(transform, "transforms", ()) or ():
        yield from iter_random_nodes(child)


def reseed_transform(transform: Any, seed_sequence: np.random.SeedSequence) -> None:
    """Give every node of ``transform`` its own stream derived from ``seed_sequence``.

    Each node gets a distinct 128-bit block of the sequence's output as the seed of both its
    numpy and its Python generator (one ``generate_state`` call is ~5x cheaper than
    ``spawn``). Mutates ``transform``: call it on a copy owned by the current thread.
    """
    nodes = list(iter_random_nodes(transform))
    blocks = seed_sequence.generate_state(4 * len(nodes), dtype=np.uint32).reshape(-1, 4)
    for node, words in zip(nodes, blocks, strict=True):
        node.random_generator = np.random.Generator(np.random.PCG64(words))
        node.py_random = random.Random(int.from_bytes(words.tobytes(), "little"))
