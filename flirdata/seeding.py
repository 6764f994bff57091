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
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from flirdata._validate import check_int

__all__ = ["sample_seed_sequence", "shuffle_seed_sequence", "iter_random_nodes", "reseed_transform", "seed_node"]

# Keep flirdata's streams apart from each other and from other users of SeedSequence([seed, ...]).
_DOMAIN = 0x466C6972  # "Flir": per-sample augmentation
_SHUFFLE_DOMAIN = 0x53687566  # "Shuf": an epoch's sample order


def _check_non_negative(name: str, value: int) -> int:
    return check_int(name, value, 0)


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

    Each node gets a distinct 384-bit block of the sequence's output: the state and increment
    of its numpy PCG64 and the seed of its Python generator. The node's generators are its own
    (albumentations' ``set_random_state`` hands one pair to every child; those are replaced once)
    and are re-seeded in place, ~3x cheaper than building new ones per sample. Mutates
    ``transform``: call it on a copy owned by the current thread.
    """
    nodes = list(iter_random_nodes(transform))
    blocks = seed_sequence.generate_state(6 * len(nodes), dtype=np.uint64).reshape(-1, 6).tolist()
    for node, block in zip(nodes, blocks, strict=True):
        seed_node(node, block)


def seed_node(node: Any, block: Sequence[int], numpy: bool = True, python: bool = True) -> None:
    """Seed one node's own generators from its block of six uint64 words, as ``reseed_transform`` does.

    ``flirdata.direct`` seeds only the generators a sample draws from, each from the block
    ``reseed_transform`` would give it, so both paths draw the same numbers; ``numpy=False``
    leaves the numpy generator (of a node that draws only from its Python one, or not yet),
    ``python=False`` the Python one (seeded before).
    """
    s0, s1, i0, i1, p0, p1 = block
    generator, python_random = _own_generators(node)
    if python:
        python_random.seed(p0 << 64 | p1)
    if not numpy:
        return
    generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": s0 << 64 | s1, "inc": i0 << 64 | i1 | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }


def _own_generators(node: Any) -> tuple[np.random.Generator, random.Random]:
    """The node's own (numpy, Python) generators, made and installed the first time."""
    owned = getattr(node, "_flirdata_generators", None)
    if owned is None or node.random_generator is not owned[0] or node.py_random is not owned[1]:
        owned = (np.random.Generator(np.random.PCG64()), random.Random())
        node.random_generator, node.py_random = owned
        node._flirdata_generators = owned
    return owned
