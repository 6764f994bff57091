"""A decoded-frame cache in one shared-memory segment, filled lazily and read by every worker.

``FlirDetection(..., cache="ram")`` builds a ``FrameCache``: one segment laid out from
coco.json's sizes, a "filled" byte per image first, then image ``k`` at a fixed offset. Whoever
decodes image ``k`` first (main process, a thread or any worker process) writes its pixels and
then sets its flag; later reads are a read-only numpy view of the segment, no decode and no copy.
Two writers of one image write the same bytes, so no lock is needed.

Over budget, the cache holds the longest prefix of images that fits (rows ``0..capacity-1``)
and warns once, naming the sizes; the other images are decoded on every read, as without cache.
The segment's pages are reserved when it is made, so a /dev/shm that another program fills
later cannot kill a read with SIGBUS; where they cannot be reserved (/dev/shm filled since its
free space was measured), the dataset warns and caches nothing.

The cache pickles as its segment name and layout: a worker attaches by name (no copy). The
creating process owns the segment and unlinks it when the cache is collected, closed, or at exit.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from flirdata._segments import ShmFullError, aligned, array_over, attach, create_segment, shm_free_bytes, unmap
from flirdata._validate import check_int

__all__ = [
    "CACHES",
    "CacheCapacityWarning",
    "CacheLayout",
    "FrameCache",
    "build_cache",
    "check_cache",
]

CACHES = ("ram",)
_OWNED: weakref.WeakValueDictionary[str, FrameCache] = weakref.WeakValueDictionary()


class CacheCapacityWarning(UserWarning):
    """The dataset's decoded frames exceed the cache budget (only a prefix of images is cached),
    or /dev/shm cannot hold the cache at all (no image is cached)."""


def check_cache(cache: str | None) -> str | None:
    """``cache`` if valid (None or one of ``CACHES``), else ValueError naming the valid values."""
    if cache is not None and cache not in CACHES:
        raise ValueError(f"cache must be None or one of {CACHES}, got {cache!r}")
    return cache


@dataclass(frozen=True)
class CacheLayout:
    """Where frame ``k`` lives: ``shapes[k]`` at ``offsets[k]``, for ``k < capacity``; flags at 0."""

    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    nbytes: int

    @property
    def capacity(self) -> int:
        return len(self.offsets)

    @classmethod
    def plan(cls, heights: Any, widths: Any, channels: int, budget: int | None) -> tuple[CacheLayout, int]:
        """The layout of the longest prefix that fits ``budget`` bytes, and the bytes all frames need."""
        pairs = zip(heights, widths, strict=True)
        shapes = [(int(h), int(w)) if channels == 1 else (int(h), int(w), channels) for h, w in pairs]
        offsets, ends, position = [], [], aligned(len(shapes))  # the flags come first
        for shape in shapes:
            offsets.append(position)
            ends.append(position + int(np.prod(shape)))
            position = aligned(ends[-1])
        # Offsets only grow, so the frames that fit are a prefix.
        fit = len(ends) if budget is None else sum(end <= budget for end in ends)
        layout = cls(tuple(shapes[:fit]), tuple(offsets[:fit]), ends[fit - 1] if fit else 0)
        return layout, position


def _destroy(segment: SharedMemory, owner: int) -> None:
    """Unmap ``segment``; unlink it only in the creating process (a forked child inherits the finalizer)."""
    unmap(segment)  # a frame the caller still holds keeps the mapping; the name goes now
    if os.getpid() == owner:
        try:
            segment.unlink()
        except FileNotFoundError:
            pass


def _reattach(name: str, layout: CacheLayout) -> FrameCache:
    """Unpickling: the owner's own cache in its process, else an attachment by name."""
    owned = _OWNED.get(name)
    return owned if owned is not None else FrameCache(layout, name=name)


class FrameCache:
    """Decoded frames of rows ``0..capacity-1`` in one shared-memory segment (see the module doc).

    ``FrameCache(layout)`` creates and owns a segment; ``FrameCache(layout, name=...)`` attaches to
    one (what unpickling does in a worker). ``get(k, decode)`` returns frame ``k`` read-only, calling
    ``decode()`` only the first time (or every time for rows past ``capacity``).
    """

    def __init__(self, layout: CacheLayout, name: str | None = None) -> None:
        self.layout = layout
        self._segment: SharedMemory | None = None
        self._finalizer: Callable[[], Any] | None = None
        if layout.capacity == 0:
            self.name = ""
        elif name is None:
            segment = create_segment(layout.nbytes)  # reserved: a /dev/shm filled later cannot SIGBUS a read
            self.name = segment.name.lstrip("/")
            self._segment = segment
            self._finalizer = weakref.finalize(self, _destroy, segment, os.getpid())
            _OWNED[self.name] = self
        else:
            self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return _reattach, (self.name, self.layout)

    @property
    def owner(self) -> bool:
        """Whether this process created the segment (and unlinks it)."""
        return self._finalizer is not None

    def _buffer(self) -> memoryview | None:
        if self._segment is None and self.name:
            try:
                self._segment = attach(self.name)  # kept for the worker's life (_segments.close_attached)
            except FileNotFoundError:  # the owner is gone (a pickle outliving it): decode as without cache
                self.name = ""
        return None if self._segment is None else self._segment.buf

    def filled(self) -> int:
        """How many frames are cached."""
        buffer = self._buffer()
        return 0 if buffer is None else int(np.frombuffer(buffer, np.uint8, self.layout.capacity).sum())

    def get(self, k: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """Frame ``k`` from the cache, or ``decode()`` stored there first (if ``k`` fits)."""
        buffer = self._buffer() if k < self.layout.capacity else None
        if buffer is None:
            return decode()
        shape = self.layout.shapes[k]
        view = array_over(buffer, shape, np.dtype(np.uint8), self.layout.offsets[k])  # keeps the mapping alive
        if not buffer[k]:
            image = decode()  # raises before anything is written: a bad image is never cached
            if image.shape != shape or image.dtype != np.uint8:
                return image  # not what coco.json promised; the reader's checks judge it
            np.copyto(view, image)
            buffer[k] = 1  # after the pixels: a reader that sees the flag sees the frame
        view.flags.writeable = False
        return view

    def close(self) -> None:
        """Unmap and, in the owning process, unlink the segment (idempotent; also on collection and exit)."""
        if self._finalizer is not None:
            self._finalizer()
        self.name = ""


def build_cache(heights: Any, widths: Any, channels: int, cache_bytes: int | None) -> FrameCache:
    """A cache for frames of these sizes within ``cache_bytes`` (None: half of /dev/shm's free space).

    The budget is capped at /dev/shm's free space; where /dev/shm does not exist, None is no limit.
    """
    if cache_bytes is not None:
        cache_bytes = check_int("cache_bytes", cache_bytes, 1, expected="a positive int or None")
    budget = cache_bytes
    free = shm_free_bytes()
    if free is not None:  # more than /dev/shm holds could not be reserved
        budget = free // 2 if cache_bytes is None else min(cache_bytes, free)
    layout, need = CacheLayout.plan(heights, widths, channels, budget)
    if layout.capacity < len(heights):
        warnings.warn(
            f"cache='ram': the {len(heights)} decoded frames need {need / 2**20:.1f} MiB but the budget is "
            f"{budget / 2**20:.1f} MiB (cache_bytes, and /dev/shm's free space); caching the first "
            f"{layout.capacity} images only",
            CacheCapacityWarning,
            stacklevel=3,
        )
    try:
        return FrameCache(layout)
    except ShmFullError as exc:  # the cache is an optimisation: without it, every read decodes
        warnings.warn(
            f"cache='ram': {exc.strerror}; caching no images (every read decodes, as without cache)",
            CacheCapacityWarning,
            stacklevel=3,
        )
        return FrameCache(CacheLayout((), (), 0))
