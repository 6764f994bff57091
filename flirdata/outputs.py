"""What a batch's images become before the training loop sees them: ``OUTPUTS``.

Batches travel from the workers as ``uint8`` (4x fewer bytes than float32 through shared
memory and pipes); the loader converts them in the consumer, once, when a model wants
floats. torchvision's detection models (Faster R-CNN, RetinaNet, FCOS, SSD) take images as
float tensors in ``[0, 1]`` with 3 channels (their normalisation has 3 means), and targets
as a list of dicts: ``"float_rgb"`` gives exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["OUTPUTS", "to_float", "to_float_rgb", "convert_batch"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` -> ``float32`` in ``[0, 1]``, same channels."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.to(torch.float32).div_(255.0)


def to_float_rgb(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 1|3, H, W]`` -> ``float32 [B, 3, H, W]`` in ``[0, 1]`` (grey repeated)."""
    channels = images.shape[-3]
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {channels} (shape {tuple(images.shape)})")
    out = to_float(images)
    return out.expand(*out.shape[:-3], 3, *out.shape[-2:]).contiguous() if channels == 1 else out


def _unchanged(images: torch.Tensor) -> torch.Tensor:
    return images


# name -> images converter applied to every batch in the consumer (see make_loader's ``output``)
OUTPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "uint8": _unchanged,
    "float": to_float,
    "float_rgb": to_float_rgb,
}


def convert_batch(batch: Any, output: str) -> Any:
    """Apply ``OUTPUTS[output]`` to the images of an ``(images, targets)`` batch."""
    convert = OUTPUTS[output]
    if convert is _unchanged:
        return batch
    if type(batch) is not tuple or not batch or not isinstance(batch[0], torch.Tensor):
        raise ValueError(f"output={output!r} needs (images, targets) batches from collate_detection")
    return (convert(batch[0]), *batch[1:])
