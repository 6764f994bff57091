"""Batching of detection samples whose box counts differ from image to image."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import torch

__all__ = ["collate_detection", "batch_memory"]

Sample = tuple[torch.Tensor, dict[str, Any]]
# (shape, dtype) -> a tensor to stack a batch's images into, or None for a fresh one.
Allocator = Callable[[tuple[int, ...], torch.dtype], "torch.Tensor | None"]
_ALLOCATOR: ContextVar[Allocator | None] = ContextVar("flirdata_batch_memory", default=None)


@contextlib.contextmanager
def batch_memory(allocate: Allocator) -> Iterator[None]:
    """Within the block, ``collate_detection`` stacks images into ``allocate(shape, dtype)``.

    A process worker passes its ring slot, so the batch is made in the memory the consumer
    reads and crosses with no copy, as torch's own workers collate into shared memory.
    """
    token = _ALLOCATOR.set(allocate)
    try:
        yield
    finally:
        _ALLOCATOR.reset(token)


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    allocate = _ALLOCATOR.get()
    out = allocate(shape, dtype) if allocate is not None else None
    return torch.empty(shape, dtype=dtype) if out is None else out


def collate_detection(samples: Sequence[Sample]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack images into ``uint8 [B, C, H, W]`` and keep targets as a list of dicts.

    Boxes cannot be stacked (each image has its own count), and torchvision's detection
    models take exactly a list of per-image target dicts, so targets stay a list. Images of
    different sizes (RGB frames of several cameras, or no transform) cannot be stacked: the
    error names the sizes and the letterbox transform that fixes it.
    """
    if not samples:
        raise ValueError("collate_detection needs at least one sample")
    images = [image for image, _ in samples]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(
            f"images of one batch must share a shape, got {_describe(shapes)}; letterbox them to one size "
            "with a transform, e.g. build_transform('rgb', size=(480, 640)) (or 'thermal', or 'none')"
        )
    out = _empty((len(images), *images[0].shape), images[0].dtype)
    torch.stack(images, out=out)
    return out, [target for _, target in samples]


def _describe(shapes: set[tuple[int, ...]]) -> str:
    """``1224x1024, 2048x1536 (width x height)``, or the full shapes where channels differ too."""
    if any(len(shape) != 3 for shape in shapes) or len({shape[0] for shape in shapes}) > 1:
        return ", ".join(f"[{', '.join(map(str, shape))}]" for shape in sorted(shapes))
    return ", ".join(f"{w}x{h}" for _, h, w in sorted(shapes, key=lambda s: (s[2], s[1]))) + " (width x height)"
