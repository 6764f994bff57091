"""Batching of detection samples whose box counts differ from image to image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["collate_detection"]

Sample = tuple[torch.Tensor, dict[str, Any]]


def collate_detection(samples: Sequence[Sample]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack images into ``uint8 [B, 1, H, W]`` and keep targets as a list of dicts.

    Boxes cannot be stacked (each image has its own count), and torchvision's detection
    models take exactly a list of per-image target dicts, so targets stay a list.
    """
    if not samples:
        raise ValueError("collate_detection needs at least one sample")
    images = [image for image, _ in samples]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(
            f"images of one batch must share a shape, got {sorted(shapes)}; "
            "give the transform a fixed output size (build_transform(size=...))"
        )
    out = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype)
    torch.stack(images, out=out)
    return out, [target for _, target in samples]
